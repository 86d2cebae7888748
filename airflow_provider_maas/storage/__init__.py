"""Storage of the provider's files: where bytes come from and go to (:mod:`.paths`) and writes that
are whole or absent (:mod:`.writes`). The names below are the ones DAG code may import."""

from __future__ import annotations

from airflow_provider_maas.storage.paths import (
    CHUNK_SIZE,
    INSTALL_HINTS,
    check_destination,
    check_within,
    conn_id_of,
    filesystem_of,
    is_local,
    open_source,
    source_size,
    to_path,
    uri_of,
)
from airflow_provider_maas.storage.writes import STALE_PART_SECONDS, EarlyWriteback, atomic_writer, remove_stale_parts

__all__ = [
    "CHUNK_SIZE",
    "INSTALL_HINTS",
    "STALE_PART_SECONDS",
    "EarlyWriteback",
    "atomic_writer",
    "check_destination",
    "check_within",
    "conn_id_of",
    "filesystem_of",
    "is_local",
    "open_source",
    "remove_stale_parts",
    "source_size",
    "to_path",
    "uri_of",
]
