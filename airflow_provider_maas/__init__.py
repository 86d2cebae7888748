"""Apache Airflow provider for the MaaS_Ge (Gemini) batch prediction API."""

from __future__ import annotations

from typing import Any

from airflow_provider_maas.hooks.connection import CONN_FIELDS, UI_FIELD_BEHAVIOUR

__version__ = "0.1.0"

INTEGRATION = "MaaS Gemini Batch"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow's providers manager (entry point ``apache_airflow_provider``)."""

    return {
        "package-name": "airflow-provider-maas",
        "name": "MaaS Gemini Batch",
        "description": "Run large LLM batch workloads on the MaaS Gemini batch prediction API (Cloudsway MaaS Ge).",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://genaiapi.cloudsway.net",
                "tags": ["ai", "service"],
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_maas.hooks.maas"]}],
        "operators": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_maas.operators.maas"]}],
        "sensors": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_maas.sensors.maas"]}],
        "triggers": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_maas.triggers.maas"]}],
        "connection-types": [
            {
                "connection-type": "maas",
                "hook-class-name": "airflow_provider_maas.hooks.maas.MaaSHook",
                "hook-name": "MaaS Gemini Batch",
                "ui-field-behaviour": {
                    "hidden-fields": list(UI_FIELD_BEHAVIOUR["hidden_fields"]),
                    "relabeling": dict(UI_FIELD_BEHAVIOUR["relabeling"]),
                    "placeholders": dict(UI_FIELD_BEHAVIOUR["placeholders"]),
                },
                "conn-fields": CONN_FIELDS,
            }
        ],
    }
