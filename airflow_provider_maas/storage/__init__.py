"""Storage of the provider's files: where bytes come from and go to (:mod:`.paths`) and writes that
are whole or absent (:mod:`.writes`).

DAG code may import :data:`__all__` only: ``to_path`` and ``uri_of`` (the README's module map), to
write a file the operators then read. The other names imported here are the package's own plumbing,
kept here for its modules and importable from :mod:`.paths` and :mod:`.writes`; they may change
without notice.
"""

from __future__ import annotations

from airflow_provider_maas.storage.paths import (  # noqa: F401  (the package's own plumbing, see above)
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
from airflow_provider_maas.storage.writes import (  # noqa: F401
    STALE_PART_SECONDS,
    EarlyWriteback,
    atomic_writer,
    remove_stale_parts,
)

#: The names DAG code may import (``tests/test_public_surface.py`` holds this list to the README).
__all__ = ["to_path", "uri_of"]
