"""OpenLineage for the MaaS operators: which files a task read and wrote.

When ``apache-airflow-providers-openlineage`` is installed, its listener calls
``get_openlineage_facets_on_complete`` after a task succeeds; the operators answer with the
datasets they recorded during ``execute`` (:meth:`LineageMixin.record_lineage`). Nothing of
OpenLineage is imported unless that call happens, and without the provider the method returns
None.

Dataset names follow the OpenLineage naming spec: local files ``file`` + absolute path, object
stores ``<scheme>://<bucket>`` + key (the Airflow connection is not part of the name). Files held
by the service are ``maas://<host>`` + ``<endpoint>/files/<name>``; a job's results are
``<endpoint>/batchPredictionJobs/<job>/results``.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


class ServiceDataset:
    """A file or a job's results held by the MaaS service (becomes an OpenLineage dataset)."""

    def __init__(self, config: Any, name: str) -> None:
        self.namespace = f"maas://{urlsplit(config.base_url).netloc}"
        self.name = f"{config.endpoint}/{name}"

    @classmethod
    def file(cls, config: Any, file_name: str) -> ServiceDataset:
        return cls(config, f"files/{file_name}")

    @classmethod
    def results(cls, config: Any, job_name: str) -> ServiceDataset:
        return cls(config, f"batchPredictionJobs/{job_name}/results")


def lineage_dataset(target: Any, dataset_cls: Any) -> Any | None:
    """The OpenLineage dataset of a path, URI, ``ObjectStoragePath`` or :class:`ServiceDataset`."""
    if isinstance(target, ServiceDataset):
        return dataset_cls(namespace=target.namespace, name=target.name)

    from airflow_provider_maas.storage import is_local, to_path  # after execute only, not where the DAG is parsed

    try:
        path = to_path(target)
    except Exception:  # an open file object, or nothing usable: no dataset
        return None
    if is_local(path):
        return dataset_cls(namespace="file", name=str(path.path))
    namespace = f"{path.protocol}://{path.bucket}" if path.bucket else path.protocol
    return dataset_cls(namespace=namespace, name=path.key)


def operator_lineage(inputs: list[Any], outputs: list[Any]) -> Any | None:
    """An ``OperatorLineage`` of these inputs and outputs; None without the OpenLineage provider."""
    try:
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None
    datasets_in = [d for d in (lineage_dataset(t, Dataset) for t in inputs) if d is not None]
    datasets_out = [d for d in (lineage_dataset(t, Dataset) for t in outputs) if d is not None]
    return OperatorLineage(inputs=datasets_in, outputs=datasets_out)


class LineageMixin:
    """``get_openlineage_facets_on_complete`` from what ``execute`` recorded."""

    _lineage: tuple[list[Any], list[Any]] | None = None

    def record_lineage(self, inputs: list[Any], outputs: list[Any]) -> None:
        """Remember what this task read and wrote (paths, URIs, ``ObjectStoragePath``, :class:`ServiceDataset`;
        None, a file not written, is left out)."""
        self._lineage = ([i for i in inputs if i is not None], [o for o in outputs if o is not None])

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any | None:
        """OpenLineage datasets of this task: its input JSONL, results and failed files."""
        if self._lineage is None:
            return None
        return operator_lineage(*self._lineage)
