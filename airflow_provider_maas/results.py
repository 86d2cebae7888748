"""Read MaaS batch results files from your own code: the stable import path of the results reader.

Pure Python, no Airflow import. The implementation lives in :mod:`airflow_provider_maas.batch.answers.results`.
"""

from __future__ import annotations

from airflow_provider_maas.batch.answers.results import (
    MISSING_STATUS,
    ResultRecord,
    ResultsFormatError,
    ResultSummary,
    extract_images,
    iter_results,
    parse_result_line,
    request_key,
    summarize,
)

__all__ = [
    "MISSING_STATUS",
    "ResultRecord",
    "ResultSummary",
    "ResultsFormatError",
    "extract_images",
    "iter_results",
    "parse_result_line",
    "request_key",
    "summarize",
]
