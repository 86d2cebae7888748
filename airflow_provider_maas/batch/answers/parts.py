"""The per-shard results files of a batch, and how they become one input for the final merge."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.answers.results import status_line
from airflow_provider_maas.batch.inputs.request_lines import iter_request_lines
from airflow_provider_maas.batch.inputs.shards import ShardPlan, copy_shard, source_label
from airflow_provider_maas.storage import CHUNK_SIZE, atomic_writer, open_source

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow.sdk import ObjectStoragePath


def write_failure_part(source: Any, plan: ShardPlan, reason: str, destination: ObjectStoragePath) -> None:
    """Results of a shard whose every job failed: each request with ``reason`` as its ``status``.

    The merge then treats them like requests the service failed one by one: they keep their place
    in the output, go to the failed file, and the summary shows the job's error as their reason.
    """
    with open_source(source) as handle, tempfile.SpooledTemporaryFile(max_size=8 * CHUNK_SIZE) as tmp:
        copy_shard(handle, plan, tmp, label=source_label(source, "source"))
        tmp.seek(0)
        with atomic_writer(destination) as out:
            for line in iter_request_lines(tmp):
                out.write(status_line(line.request, reason))


def concatenate(parts: Iterable[ObjectStoragePath], destination: ObjectStoragePath) -> None:
    """Stream ``parts`` one after the other into ``destination`` (one file handle open at a time).

    The merge opens each of its sources at once: one file instead of thousands of handles.
    """
    with atomic_writer(destination) as out:
        for part in parts:
            last = b"\n"
            with part.open("rb") as handle:
                while chunk := handle.read(CHUNK_SIZE):
                    out.write(chunk)
                    last = chunk[-1:]
            if last != b"\n":
                out.write(b"\n")
