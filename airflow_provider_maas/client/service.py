"""Facts of the service itself, needed before any connection is read: where it answers and under
which path. No import, so the connection form and the provider info can use them at parse time."""

from __future__ import annotations

#: The vendor's base URL, used when a connection names no host.
DEFAULT_BASE_URL = "https://genaiapi.cloudsway.net"
#: Path of the batch API under the base URL; the ENDPOINT id follows it.
API_PREFIX = "/v1/ai/batch/gemini"
