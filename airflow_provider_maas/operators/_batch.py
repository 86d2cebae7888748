"""The old home of :class:`~airflow_provider_maas.operators.batch.MaaSBatchPredictionOperator`,
kept so that imports of it from here go on working. Import it from ``operators.maas``."""

from __future__ import annotations

from airflow_provider_maas.operators.batch import MaaSBatchPredictionOperator

__all__ = ["MaaSBatchPredictionOperator"]
