"""The batch data plane: request files in, results files out, and the state of many jobs at once.
No module here imports an operator. Its folders:

- ``inputs/``: request files in: each line checked, the input cut within the service's limits.
- ``record/``: the record of paid work: the state beside the destination and what a try may do with it.
- ``cost/``: what a batch costs and may cost: estimates, the cap and the canary.
- ``answers/``: results matched with their requests, the best answer kept, the outputs and summary.

Each folder's ``__init__`` names its modules. Here, the loop: ``run`` (one batch in one task, as steps
between its waits), ``resume`` (take over an earlier try's state, or start over), ``round_files``
(each round's requests and results, in files beside the state), ``driver`` (transfers and calls in a
bounded pool; ``transfers``: what each finished transfer means for its shard), ``polling`` (the one
wait policy of every waiter), ``pacing`` (when to resume, when to give up), ``settings`` (the batch
operator's parameters, the one carrier of a try's; ``parameters``: their defaults and checks where the
DAG is parsed; ``int_settings``: the one check of an integer setting and the one table of their bounds), ``progress`` (with ``answer_counts``: how far a batch is, for the progress
page; ``progress.read_progress`` is the one documented reader of a batch state).
"""
