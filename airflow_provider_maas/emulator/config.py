"""Configuration of the MaaS_Ge batch API emulator (no Airflow imports here)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from airflow_provider_maas.emulator.schedule import ScheduledFault

JOB_STATE_PENDING = "JOB_STATE_PENDING"
JOB_STATE_RUNNING = "JOB_STATE_RUNNING"
JOB_STATE_SUCCEEDED = "JOB_STATE_SUCCEEDED"
JOB_STATE_PARTIALLY_SUCCEEDED = "JOB_STATE_PARTIALLY_SUCCEEDED"
JOB_STATE_FAILED = "JOB_STATE_FAILED"
JOB_STATE_CANCELLED = "JOB_STATE_CANCELLED"
JOB_STATE_EXPIRED = "JOB_STATE_EXPIRED"

TERMINAL_STATES = frozenset(
    {
        JOB_STATE_SUCCEEDED,
        JOB_STATE_PARTIALLY_SUCCEEDED,
        JOB_STATE_FAILED,
        JOB_STATE_CANCELLED,
        JOB_STATE_EXPIRED,
    }
)
#: Terminal states whose results can be downloaded.
RESULT_STATES = frozenset({JOB_STATE_SUCCEEDED, JOB_STATE_PARTIALLY_SUCCEEDED})

DEFAULT_MODEL = "MaaS_Ge_2.5_flash_20250617_batch"
DEFAULT_IMAGE_MODEL = "MaaS_Ge_3.1_flash_image_preview_20260226"


@dataclass
class EmulatorConfig:
    """Everything the emulator can be told. Fault rates are fractions (0..1) of API requests.

    Rate-based fault decisions are deterministic given ``seed`` (see ``faults.py``); ``faults``
    schedules exact ones ("the next N calls of kind K answer with fault F", see ``schedule.py``). A fault that makes a
    request fail (429, 5xx, reset, slow with the client gone) never applies the request's side
    effect; only ``rate_create_lost_response`` creates the job and then loses the answer.
    Settings may be changed on a running emulator (``emulator.config.rate_429 = 0.5``).
    """

    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port
    api_key: str = "emulator-key"
    endpoint: str = "emulator-endpoint"
    job_duration: float = 2.0  # seconds from create to terminal state; PENDING first 1/4, RUNNING after
    final_state: str = JOB_STATE_SUCCEEDED
    #: Every k-th request (1-based input order: k, 2k...) fails: non-empty status, no response.
    #: With final_state PARTIALLY_SUCCEEDED and 0 here, every 2nd request fails.
    fail_every: int = 0
    latency: float = 0.0  # seconds added to every API response
    shuffle_results: bool = True
    normalise_requests: bool = True
    image_output: bool = False
    result_padding_bytes: int = 0
    retention_seconds: float = 7 * 86400
    max_requests: int = 100
    max_bytes: int = 50 * 1024 * 1024
    data_dir: str | None = None
    seed: int = 0
    # fault injection (deterministic given seed)
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    retry_after: float = 1.0
    rate_reset: float = 0.0
    rate_slow: float = 0.0
    slow_seconds: float = 30.0
    rate_truncate_download: float = 0.0
    rate_corrupt_download: float = 0.0
    rate_wrong_md5: float = 0.0
    fault_create: bool = True  # False: the generic faults are never injected on create
    # -- beyond the original interface --
    #: The job IS created, then the connection is dropped before the answer (never on other routes).
    rate_create_lost_response: float = 0.0
    #: Endpoints that answer 403 PERMISSION_DENIED to a valid key.
    forbidden_endpoints: tuple[str, ...] = ()
    #: More endpoints the key may use (jobs stay visible only under the endpoint that created them).
    extra_endpoints: tuple[str, ...] = ()
    #: Model name reported by jobs and results (``None``: a text or an image model by ``image_output``).
    model: str | None = None
    #: Cap of ``MaaSEmulator.access_log`` (oldest entries dropped beyond it).
    access_log_limit: int = 100_000
    #: Seconds the server waits for in-flight requests when it stops.
    shutdown_timeout: float = 1.0
    #: The fault schedule at start: ``"KIND:N:FAULT[=ARG]"`` strings (or ``ScheduledFault``), e.g.
    #: ``("create:1:lost-500",)``; see ``schedule.py``. Add more while running with
    #: ``MaaSEmulator.schedule``.
    faults: tuple[Any, ...] = ()
    #: Answers to requests asking for a schema (``generationConfig.responseSchema``) are JSON of
    #: that shape; this fraction of them (chosen by request content, so deterministically) is cut
    #: short: not JSON.
    invalid_output_rate: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    @property
    def endpoints(self) -> tuple[str, ...]:
        return (self.endpoint, *self.extra_endpoints, *self.forbidden_endpoints)

    @property
    def model_name(self) -> str:
        if self.model:
            return self.model
        return DEFAULT_IMAGE_MODEL if self.image_output else DEFAULT_MODEL

    def validate(self) -> None:
        """Raise ``ValueError`` on a setting that cannot work."""
        if self.final_state not in TERMINAL_STATES:
            raise ValueError(f"final_state must be one of {sorted(TERMINAL_STATES)}, not {self.final_state!r}")
        for f in fields(self):
            if f.name.startswith("rate_"):
                value = getattr(self, f.name)
                if not 0.0 <= float(value) <= 1.0:
                    raise ValueError(f"{f.name} must be between 0 and 1, not {value!r}")
        for name in ("job_duration", "latency", "retry_after", "slow_seconds", "retention_seconds"):
            if not 0 <= getattr(self, name) < math.inf:  # NaN fails too
                raise ValueError(f"{name} must be a finite number of seconds (>= 0), not {getattr(self, name)!r}")
        if not 0.0 <= float(self.invalid_output_rate) <= 1.0:
            raise ValueError(f"invalid_output_rate must be between 0 and 1, not {self.invalid_output_rate!r}")
        for name in ("fail_every", "result_padding_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_requests < 1 or self.max_bytes < 1:
            raise ValueError("max_requests and max_bytes must be positive")
        if not self.api_key:
            raise ValueError("api_key must not be empty")
        if not self.endpoint or "/" in self.endpoint:
            raise ValueError("endpoint must be a non-empty path segment")
        self.extra_endpoints = tuple(self.extra_endpoints)
        self.forbidden_endpoints = tuple(self.forbidden_endpoints)
        self.faults = tuple(self.faults)
        self.scheduled_faults()  # raises ValueError on a bad entry

    def scheduled_faults(self) -> tuple[ScheduledFault, ...]:
        return tuple(ScheduledFault.parse(spec) for spec in self.faults)

    def has_faults(self) -> bool:
        return any(getattr(self, name) > 0 for name in _RATE_FIELDS)


_RATE_FIELDS = tuple(f.name for f in fields(EmulatorConfig) if f.name.startswith("rate_"))
