"""A tiny, independent stand-in for the MaaS service (``http.server``), for answers the emulator
cannot give: a 303 to a create call, a create answer naming the job ``a/b``, results the service
wrote damaged (with the right size and CRC32C, so only reading them shows it).

Written from the API document, not from the provider or the emulator: uploads are answered with
the size and MD5 of what arrived, jobs succeed at once, results echo each uploaded request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import google_crc32c

#: ``(status, headers, body)`` of one answer.
Answer = tuple[int, dict[str, str], bytes]


def json_answer(payload: Any, status: int = 200) -> Answer:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


@dataclass
class StubService:
    """What the stub was asked and how it answers.

    :param create: Answers every create call instead of creating a job (None: create job ``"1"``, ``"2"``...).
    :param damage: Turns the results of a job (bytes, one echo line per request) into what is served.
    :param respond: The ``response`` of each request (None: the text "ok", no usage).
    """

    create: Answer | None = None
    damage: Callable[[bytes], bytes] = lambda results: results
    respond: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    jobs: dict[str, str] = field(default_factory=dict)
    base_url: str = ""

    def creates(self) -> int:
        return sum(1 for method, path in self.requests if method == "POST" and path.endswith("/batchPredictionJobs"))

    def answer(self, method: str, target: str, body: bytes) -> Answer:
        self.requests.append((method, target))
        parts = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        if method == "POST" and path.endswith("/files"):
            name = query["name"]
            self.files[name] = body
            md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
            return json_answer({"name": name, "size": str(len(body)), "md5Hash": md5})
        if method == "POST" and path.endswith("/batchPredictionJobs"):
            if self.create is not None:
                return self.create
            name = str(len(self.jobs) + 1)
            self.jobs[name] = json.loads(body)["inputConfig"]["gcsSource"]["uris"]
            return json_answer({"name": name, "state": "JOB_STATE_PENDING"})
        name = path.split("/batchPredictionJobs/", 1)[-1].removesuffix("/content")
        if method == "GET" and name in self.jobs:
            results = self.results(name)
            if path.endswith("/content") and query.get("alt") == "media":
                return 200, {"Content-Type": "application/octet-stream"}, results
            if path.endswith("/content"):
                crc = base64.b64encode(google_crc32c.Checksum(results).digest()).decode()
                return json_answer({"size": str(len(results)), "crc32c": crc})
            count = len(self.files[self.jobs[name]].splitlines())
            stats = {"successfulCount": str(count), "failedCount": None}
            return json_answer({"name": name, "state": "JOB_STATE_SUCCEEDED", "completionStats": stats})
        return json_answer({"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}, 404)

    def results(self, job_name: str) -> bytes:
        lines = []
        for line in self.files[self.jobs[job_name]].splitlines():
            request = json.loads(line)["request"]
            answer = {"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP"}]}
            if self.respond is not None:
                answer = self.respond(request)
            lines.append(json.dumps({"request": request, "response": answer, "status": ""}).encode() + b"\n")
        return self.damage(b"".join(lines))


@contextmanager
def stub_service(service_class: type[StubService] = StubService, **kwargs: Any) -> Iterator[StubService]:
    """Serve a :class:`StubService` (or ``service_class``) on loopback while the block runs (``.base_url``)."""
    service = service_class(**kwargs)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, headers, payload = service.answer(self.command, self.path, body)
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(payload))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    service.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
