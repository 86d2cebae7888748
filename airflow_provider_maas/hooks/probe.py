"""The connection test (the form's Test button, ``MaaSHook.test_connection``): the probe file it
uploads, and what each answer tells the person who pressed the button."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_maas.client.config import ApiConfig
    from airflow_provider_maas.exceptions import MaaSApiError

#: The probe file ``test_connection`` uploads (replaced on every test; never used by a job).
PROBE_FILE_NAME = "maas-connection-test.jsonl"
PROBE_FILE_BODY = b'{"request":{"contents":[{"role":"user","parts":[{"text":"connection test"}]}]}}\n'


def probe_refused(err: MaaSApiError, config: ApiConfig) -> str:
    """What the service's refusal of the probe upload says of the connection: the field to check."""
    if err.status_code == 401:
        return f"The service refused the API key (HTTP 401): check the connection's API Key field. {err}"
    if err.status_code == 403:
        return (
            f"The API key may not use endpoint {config.endpoint!r} (HTTP 403): check the Endpoint field, "
            f"or ask the vendor to enable this key for it. {err}"
        )
    if err.status_code == 404:
        return (
            f"Endpoint {config.endpoint!r} is unknown at {config.base_url} (HTTP 404 on upload): check "
            f"the connection's Endpoint field (and the Base URL). {err}"
        )
    return str(err)


def probe_accepted(config: ApiConfig) -> str:
    """What a stored probe file says of the connection."""
    return (
        f"Connection works: the key is accepted for endpoint {config.endpoint!r} at {config.base_url} "
        f"(uploaded the probe file {PROBE_FILE_NAME!r}; no job was created)."
    )
