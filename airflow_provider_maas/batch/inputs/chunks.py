"""An input of any size cut into chunks of consecutive requests, each for one mapped
``MaaSBatchPredictionOperator`` (which splits its chunk again into uploads): the upload limits of
:func:`~airflow_provider_maas.batch.inputs.shards.write_shards` do not apply to a chunk.

Every line is validated before anything is written; chunks are copied as byte ranges of the input.
"""

from __future__ import annotations

import sys
from typing import Any

from airflow_provider_maas.batch.inputs.shards import copy_shard, plan_shards, shard_name
from airflow_provider_maas.storage import atomic_writer, check_destination, open_source, remove_stale_parts, uri_of

#: Chunk files are ``chunk-00000.jsonl``, ``chunk-00001.jsonl``...
CHUNK_PREFIX = "chunk"


def write_chunks(source: Any, prefix: Any, *, max_requests: int, max_bytes: int | None = None, log: Any) -> list[str]:
    """Validate ``source``, then write chunks of at most ``max_requests`` requests (and ``max_bytes``
    bytes, when given) under the folder ``prefix``; return their URIs in input order."""
    folder = check_destination(prefix, what="destination prefix", folder=True)
    with open_source(source) as handle:
        plans = plan_shards(
            handle, max_requests=max_requests, max_bytes=sys.maxsize if max_bytes is None else max_bytes
        )
        remove_stale_parts(folder)
        targets = [folder / shard_name(CHUNK_PREFIX, plan.index, len(plans)) for plan in plans]
        for plan, target in zip(plans, targets, strict=True):
            with atomic_writer(target, clean=False) as out:
                copy_shard(handle, plan, out)
    log.info("Cut into %d chunks of at most %d requests under %s", len(targets), max_requests, uri_of(folder))
    return [uri_of(target) for target in targets]
