"""The batch data plane of :class:`~airflow_provider_maas.operators.maas.MaaSBatchPredictionOperator`.

``state``: the typed state of a batch (its shards, their status, the jobs that answer them);
``journal``: where that state lives, in object storage beside the destination, written in small
append-only records; ``driver``: uploads, creates, polls and downloads in a bounded thread pool.
"""
