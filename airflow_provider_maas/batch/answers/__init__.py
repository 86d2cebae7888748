"""Results in, answers out: each result line read, matched with its request, the best answer kept.

``results`` (one result line parsed, summarised), ``matching`` (the one engine pairing results with
requests, and what unmatched and duplicate mean; ``answer_lines``: a result line parsed for it, an
answer read back), ``pay_once`` (pay once per answer: reuse,
identical requests, retry rounds; ``retry_failures``: which failures a retry round resends),
``merge`` (results in input order, summarised, failures set aside), ``parts`` (the per-shard
results of a batch), ``schema`` (answers checked against ``response_schema``), ``summary`` (the
outputs, the summary and whether the task fails; ``summary_types``: the summaries' keys as types).
"""
