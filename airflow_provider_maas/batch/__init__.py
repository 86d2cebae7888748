"""The batch data plane: request files in, results files out, and the state of many jobs at once.

Input: ``lines`` (the one line reader of every JSONL file), ``request_lines`` (what one request
line must be), ``shards`` (a file planned and copied as shards within the service's limits).
Output: ``results`` (one result line parsed, summarised), ``matching`` (the one engine pairing
results with requests, and what unmatched and duplicate mean), ``merge`` (results as people use
them: in input order, summarised, failures set aside), ``parts`` (per-shard results of a batch).
Many jobs: ``state`` (the typed state of a batch), ``journal`` (where it lives, beside the
destination; ``state_objects``: each object's bytes, read back whole or refused), ``driver``
(transfers and calls in a bounded pool; ``transfers``: what each finished transfer means for its
shard), ``rounds``/``cost`` (pay once per answer: reuse, identical requests, retry rounds). The
one-task batch operator's decisions: ``settings`` (its parameters checked), ``resume`` (take over
an earlier try's state, or start over), ``recovery`` (the state is whole, or the task stops;
``second_record``: where the state is and job names a failed write kept; ``write_failures``: what
a failed write says), ``round_files`` (each round's requests and results), ``pacing`` (when to
resume, when to give up), ``summary`` (the outputs and the summary); ``create_guard`` (the
create-in-flight marker every job-creating operator writes). ``progress`` (with ``answer_counts``)
reads how far a batch is, for the progress page.
No module here imports an operator.
"""
