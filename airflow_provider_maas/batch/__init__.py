"""The batch data plane: request files in, results files out, and the state of many jobs at once.
No module here imports an operator.

Requests: ``lines`` (the one line reader of every JSONL file), ``request_lines`` (what one request
line must be; the service's limits per file), ``shards`` (a file planned and copied as shards within
those limits), ``chunks`` (an input cut into chunks, one for each mapped batch operator), ``rewrite``
(the one place the user's request lines are changed), ``settings`` (the batch operator's parameters
checked; ``int_settings``: the one check of an integer setting and the one table of their bounds).

State & record of paid work: ``state`` (the typed state of a batch), ``journal`` (where it lives,
beside the destination; ``state_objects``: each object's bytes, read back whole or refused),
``ownership`` (one writer per state, one owner per destination), ``recovery`` (the state is whole,
or the task stops; ``second_record``: where the state is and job names a failed write kept;
``write_failures``: what a failed write says), ``task_record`` (where a task instance's record
across tries lives), ``create_guard`` (the create-in-flight marker every job-creating operator
writes), ``origin`` (which ENDPOINT wrote a results file).

The loop: ``run`` (one batch in one task, as steps between its waits), ``resume`` (take over an
earlier try's state, or start over), ``round_files`` (each round's requests and results),
``driver`` (transfers and calls in a bounded pool; ``transfers``: what each finished transfer means
for its shard), ``polling`` (the one wait policy of every waiter), ``pacing`` (when to resume, when
to give up), ``progress`` (with ``answer_counts``: how far a batch is, for the progress page).

Cost: ``rounds`` (pay once per answer: reuse, identical requests, retry rounds; ``retry_failures``:
which failures a retry round resends), ``cost`` (what
answers cost at the user's prices), ``estimates`` (token estimates and worst cases), ``bounds`` (the
operator's bounds on what one request counts), ``budget`` (the cap and the canary, decided before
each create; ``budget_checks``: its settings and prices checked first), ``spend`` (the ledger: what
is spent and reserved), ``spend_before`` (what the states a batch replaced spent), ``canary`` (the
first requests sent as one job), ``dry_run`` (what a real run would send and cost, nothing paid).

Results: ``results`` (one result line parsed, summarised), ``matching`` (the one engine pairing
results with requests, and what unmatched and duplicate mean), ``merge`` (results in input order,
summarised, failures set aside), ``parts`` (the per-shard results of a batch), ``schema`` (answers
checked against ``response_schema``), ``summary`` (the outputs, the summary and whether the task
fails; ``summary_types``: the summaries' keys as types).
"""
