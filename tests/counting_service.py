"""The independent stub service (:mod:`tests.service_stub`) with jobs that take time to run and can
be forgotten (status 404), counting the jobs created: what the trials of issue 19 count as paid."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tests.service_stub import Answer, StubService, json_answer


@dataclass
class CountingService(StubService):
    """:param job_duration: Seconds a job reports ``JOB_STATE_RUNNING`` after its create."""

    job_duration: float = 0.3
    started: dict[str, float] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)
    #: The ENDPOINT each job was created on: a job is found under that ENDPOINT only.
    endpoints: dict[str, str] = field(default_factory=dict)

    def answer(self, method: str, target: str, body: bytes) -> Answer:
        endpoint = target.split("/v1/ai/batch/gemini/", 1)[-1].split("/", 1)[0]
        if method == "POST" and target.split("?", 1)[0].endswith("/batchPredictionJobs"):
            answer = super().answer(method, target, body)
            self.started[str(len(self.jobs))] = time.monotonic()
            self.endpoints[str(len(self.jobs))] = endpoint
            return answer
        name = target.split("?", 1)[0].split("/batchPredictionJobs/", 1)[-1].removesuffix("/content")
        if name in self.forgotten or self.endpoints.get(name, endpoint) != endpoint:
            self.requests.append((method, target))
            return json_answer({"error": {"code": 404, "message": "no such job", "status": "NOT_FOUND"}}, 404)
        if method == "GET" and name in self.started and time.monotonic() - self.started[name] < self.job_duration:
            self.requests.append((method, target))
            if target.split("?", 1)[0].endswith("/content"):
                return json_answer({"error": {"code": 404, "message": "not yet", "status": "NOT_FOUND"}}, 404)
            return json_answer({"name": name, "state": "JOB_STATE_RUNNING"})
        return super().answer(method, target, body)

    def forget(self) -> None:
        """The service forgets every job (its status answers 404 from now on)."""
        self.forgotten |= set(self.jobs)

    @property
    def created(self) -> int:
        return self.creates()


def counting_service(monkeypatch: Any, **kwargs: Any) -> Any:
    """A context manager serving a :class:`CountingService`; ``maas_default`` points at it."""
    from contextlib import contextmanager

    from tests.conftest import connection_env
    from tests.service_stub import stub_service

    @contextmanager
    def serve():
        with stub_service(CountingService, **kwargs) as service:
            monkeypatch.setenv(*connection_env(service.base_url))
            yield service

    return serve()
