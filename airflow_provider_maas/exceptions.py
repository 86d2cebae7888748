"""Exceptions raised by the MaaS provider.

Every exception derives from :class:`MaaSError`, itself an ``AirflowException``, so Airflow
treats them as task failures. Code branches on these types, never on message text. No message
ever contains the API key.

Errors that cannot succeed on a retry (:class:`MaaSInputError`, :class:`MaaSConfigError`,
:class:`MaaSAuthError`, :class:`MaaSUnknownEndpointError`, :class:`MaaSJobCreationUncertainError`) also derive from Airflow's
``AirflowFailException``: they fail the task at once, without consuming its retries. Transient
ones (:class:`MaaSRetryableError`, :class:`MaaSTimeoutError`, :class:`MaaSIntegrityError`...) keep
Airflow's retries.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_maas._compat import AirflowException, AirflowFailException


class MaaSError(AirflowException):
    """Base class of every error raised by the MaaS provider."""


class MaaSInputError(MaaSError, AirflowFailException, ValueError):
    """Bad input given by the user (a JSONL file, a name, a destination, a setting).

    Raised before any request is sent, so nothing was uploaded or paid for. Not retried by Airflow.
    """

    def __init__(self, message: str, *, line_number: int | None = None) -> None:
        super().__init__(message)
        self.line_number = line_number


class MaaSConfigError(MaaSInputError):
    """The Airflow connection or hook settings are incomplete or unsafe (missing key, endpoint...)."""


class MaaSInputChangedError(MaaSInputError):
    """The input file changed after the batch was planned: a shard's bytes no longer have the size
    and SHA-256 the plan recorded (an upstream task rewrote the file, even with the same size).

    Raised before the shard is uploaded, so nothing is paid for it. Not retried by Airflow: restore
    the file, or clear the task to start the batch over with the new one.
    """


class MaaSApiError(MaaSError):
    """The service answered with an HTTP error.

    :param status_code: HTTP status code of the answer.
    :param error_status: The service's error status (e.g. ``NOT_FOUND``), if it sent one.
    :param error_message: The service's error message, if it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_status: str | None = None,
        error_message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code  # type: ignore[assignment]  # AirflowException declares an HTTPStatus
        self.error_status = error_status
        self.error_message = error_message
        self.retry_after = retry_after


class MaaSAuthError(MaaSApiError, AirflowFailException):
    """The service refused the API key (401) or the key may not use this endpoint (403). Not retried by Airflow."""


class MaaSNotFoundError(MaaSApiError):
    """The job, file or results do not exist (404), or no longer exist (410, kept 7 days)."""


class MaaSJobGoneError(MaaSNotFoundError, AirflowFailException):
    """A job the batch state records answers 404 on every poll: the service no longer knows it. An
    automatic retry would see the same, so it is not retried; clearing the task submits its shard
    again (a person's choice: it is paid again)."""


class MaaSUnknownEndpointError(MaaSNotFoundError, AirflowFailException):
    """A 404 on the ENDPOINT's own paths (upload, create): the service does not know the ENDPOINT
    (or, for a create, the uploaded file), a configuration error no retry can fix. Not retried by
    Airflow; a 404 on a job or its results stays a retried :class:`MaaSNotFoundError`."""


class MaaSResultsGoneError(MaaSNotFoundError):
    """The job's results are gone (410: the service keeps them 7 days). Treat the job like a failed one."""


class MaaSRetryableError(MaaSApiError):
    """A transient failure (408, 429, any 5xx, connection error, timeout) that is worth retrying."""


class MaaSRateLimitError(MaaSRetryableError):
    """The service refused the call for quota or rate reasons (429) and did not act on it.

    Also raised by job creation after its retries: no job was created, so the shard can be
    submitted again later.
    """


class MaaSTimeoutError(MaaSError):
    """Waiting for a job, or a single request, took longer than allowed."""


class MaaSJobFailedError(MaaSError):
    """A batch job ended in a state that is not a success (FAILED, CANCELLED, EXPIRED...).

    :param job_name: Name of the job.
    :param state: Final state of the job.
    :param job: The job JSON as last returned by the service.
    """

    def __init__(
        self,
        message: str,
        *,
        job_name: str | None = None,
        state: str | None = None,
        job: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.job_name = job_name
        self.state = state
        self.job = job


class MaaSJobCreationUncertainError(MaaSError, AirflowFailException):
    """A create-job request may have reached the service, but no usable answer came back.

    It is not retried, neither by the hook nor by Airflow: retrying could create (and pay for) a
    second job, and the API has no list call to find the first one.
    """


class MaaSIntegrityError(MaaSError):
    """Transferred bytes did not match the size or checksum the service reported, or a results file
    is not what the service writes (a line that is not a JSON object, image data that is not base64):
    the message then names the file and the line."""


class MaaSBudgetExceededError(MaaSError, AirflowFailException):
    """A batch stopped creating jobs: one more would have passed ``max_cost_usd`` (the jobs in flight
    were finished and downloaded first). Not retried: a retry would stop at the same place. The
    message says what was spent and reserved, how many requests got answers and how many were not
    sent, and how to continue."""


class MaaSCanaryFailedError(MaaSError, AirflowFailException):
    """A batch's canary (its first ``canary_requests`` requests, sent first as one job) had more
    failed or invalid answers than ``canary_max_failed``: nothing more was sent. The message quotes
    the first failures."""


class MaaSStateError(MaaSError, AirflowFailException):
    """The batch operator's record of paid work (its state beside the destination, or the pointer to
    it in ``task_state_store``) is missing, damaged, of another format version, shared with another
    task instance, or taken over by another live try.

    The API has no list call, so this record is the only proof of which jobs were paid for: the task
    creates nothing and fails without Airflow retries. The message names the state's location, what
    is wrong, every job name still known, and the way on (``start_over=True`` and a clear).

    :param job_names: Job names still known from any surviving source.
    """

    def __init__(self, message: str, *, job_names: list[str] | None = None) -> None:
        super().__init__(message)
        self.job_names = list(job_names or [])


class MaaSStateWriteError(MaaSError):
    """Writing the batch state failed (read-only filesystem, disk full, object store error) after the
    names of the jobs just created were saved in ``task_state_store``: an automatic retry reattaches
    to them, so this one keeps Airflow's retries.

    :param job_names: The jobs just created whose names were saved there (none: no job was missing).
    """

    def __init__(self, message: str, *, job_names: list[str] | None = None) -> None:
        super().__init__(message)
        self.job_names = list(job_names or [])
