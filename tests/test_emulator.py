"""The emulator follows the documented MaaS_Ge batch API (real HTTP on loopback with ``requests``)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
import requests

from airflow_provider_maas.emulator import EmulatorConfig, MaaSEmulator, run_emulator

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent
KEY = "emulator-test-key-42"
EP = "test-ep"
AUTH = {"Authorization": f"Bearer {KEY}"}
US_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
US_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
T = 5  # HTTP timeout (s)


@pytest.fixture(scope="session", autouse=True)
def airflow_db():
    """These tests never touch Airflow's database: override conftest's session migration."""
    yield


def fixture_json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def cfg(**overrides: Any) -> EmulatorConfig:
    return EmulatorConfig(**{"api_key": KEY, "endpoint": EP, "job_duration": 0.2, **overrides})


def prefix(emu: Any, endpoint: str = EP) -> str:
    return f"{emu.base_url}/v1/ai/batch/gemini/{endpoint}"


def make_jsonl(n: int, tag: str = "q") -> bytes:
    lines = [
        json.dumps(
            {
                "request": {
                    "contents": [
                        {
                            "role": "user",
                            "parts": [
                                {"text": f"{tag} number {i}: what is {i} + {i}?"},
                                {"file_data": {"file_uri": f"gs://b/{i}.png", "mime_type": "image/png"}},
                            ],
                        }
                    ],
                    "generationConfig": {"temperature": 0.4},
                }
            }
        )
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def upload(emu: Any, name: str, data: bytes, **kw: Any) -> requests.Response:
    return requests.post(
        f"{prefix(emu)}/files",
        params={"uploadType": "media", "name": name},
        data=data,
        headers={**AUTH, "Content-Type": "application/octet-stream"},
        timeout=T,
        **kw,
    )


def create_body(file_name: str) -> dict[str, Any]:
    body = fixture_json("create_request.json")
    body["inputConfig"]["gcsSource"]["uris"] = file_name
    return body


def create(emu: Any, file_name: str, **kw: Any) -> requests.Response:
    return requests.post(
        f"{prefix(emu)}/batchPredictionJobs", json=create_body(file_name), headers=AUTH, **{"timeout": T, **kw}
    )


def get_job(emu: Any, job: str) -> requests.Response:
    return requests.get(f"{prefix(emu)}/batchPredictionJobs/{job}", headers=AUTH, timeout=T)


def content(emu: Any, job: str, alt: str | None = None, **kw: Any) -> requests.Response:
    params = {"alt": alt} if alt else {}
    headers = {**AUTH, **kw.pop("headers", {})}
    return requests.get(
        f"{prefix(emu)}/batchPredictionJobs/{job}/content", params=params, headers=headers, timeout=T, **kw
    )


def submit(emu: Any, data: bytes, name: str = "in.jsonl") -> str:
    assert upload(emu, name, data).status_code == 200
    r = create(emu, name)
    assert r.status_code == 200, r.text
    return r.json()["name"]


def wait_terminal(emu: Any, job: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        res = get_job(emu, job).json()
        if res["state"] not in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING"):
            return res
        assert time.monotonic() < deadline, res
        time.sleep(0.02)


def run_job(emu: Any, data: bytes, name: str = "in.jsonl") -> tuple[str, dict[str, Any]]:
    job = submit(emu, data, name)
    return job, wait_terminal(emu, job)


def lines_of(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.decode().splitlines()]


def crc32c_b64(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def assert_google_error(r: requests.Response, code: int, status: str) -> str:
    assert r.status_code == code, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "status"}
    assert body["error"]["code"] == code and body["error"]["status"] == status
    assert body["error"]["message"]
    return body["error"]["message"]


def input_texts(data: bytes) -> list[str]:
    return [json.loads(x)["request"]["contents"][0]["parts"][0]["text"] for x in data.splitlines() if x.strip()]


def result_texts(lines: list[dict[str, Any]]) -> list[str]:
    return [line["request"]["contents"][0]["parts"][0]["text"] for line in lines]


# --------------------------------------------------------------------------- 1. upload


def test_upload_shape_hashes_and_replace():
    data = (FIXTURES / "requests_example.jsonl").read_bytes()
    with run_emulator(cfg()) as emu:
        r = upload(emu, "ImageToImage.jsonl", data)
        assert r.status_code == 200, r.text
        res = r.json()
        expected = fixture_json("upload_response.json")
        assert list(res) == list(expected)
        assert all(isinstance(v, str) for v in res.values())
        assert res["kind"] == "storage#object" and res["name"] == "ImageToImage.jsonl"
        assert res["size"] == str(len(data))
        assert res["md5Hash"] == base64.b64encode(hashlib.md5(data).digest()).decode()
        assert res["crc32c"] == crc32c_b64(data)
        assert res["id"] == res["generation"] and res["generation"].isdigit()
        assert res["metageneration"] == "1"
        etag = base64.b64decode(res["etag"])
        assert etag[0] == 0x08 and etag.endswith(b"\x10\x01")
        for key in ("timeCreated", "updated", "timeStorageClassUpdated", "timeFinalized"):
            assert MS_Z.match(res[key]), res[key]

        again = upload(emu, "ImageToImage.jsonl", data + data).json()
        assert int(again["generation"]) > int(res["generation"])
        assert again["size"] == str(2 * len(data))
        assert emu.emulator.uploads_by_name["ImageToImage.jsonl"] == 2
        assert emu.emulator.files["ImageToImage.jsonl"]["generation"] == again["generation"]


def test_upload_streams_a_large_body_in_chunks():
    data = make_jsonl(100, tag="x" * 30_000)  # ~3 MB, several flushes to disk
    with run_emulator(cfg(data_dir=None)) as emu:
        r = upload(emu, "big.jsonl", iter([data[i : i + 65536] for i in range(0, len(data), 65536)]))
        assert r.status_code == 200, r.text
        assert r.json()["size"] == str(len(data)) and r.json()["crc32c"] == crc32c_b64(data)
        assert r.json()["md5Hash"] == base64.b64encode(hashlib.md5(data).digest()).decode()
        assert Path(emu.emulator.files["big.jsonl"]["path"]).read_bytes() == data


def test_upload_limits_and_validation():
    with run_emulator(cfg(max_bytes=20_000)) as emu:
        url = f"{prefix(emu)}/files"
        ok = make_jsonl(2)
        r = requests.post(url, params={"name": "a"}, data=ok, headers=AUTH, timeout=T)
        assert "uploadType" in assert_google_error(r, 400, "INVALID_ARGUMENT")
        r = requests.post(url, params={"uploadType": "resumable", "name": "a"}, data=ok, headers=AUTH, timeout=T)
        assert_google_error(r, 400, "INVALID_ARGUMENT")
        r = requests.post(url, params={"uploadType": "media"}, data=ok, headers=AUTH, timeout=T)
        assert "name" in assert_google_error(r, 400, "INVALID_ARGUMENT")
        # 101 requests
        line = b'{"request":{"contents":[]}}\n'
        assert "100" in assert_google_error(upload(emu, "a", line * 101), 400, "INVALID_ARGUMENT")
        assert upload(emu, "a", line * 100).status_code == 200
        # max_bytes + 1 (with and without Content-Length)
        too_big = b"x" * 20_001
        assert "20000" in assert_google_error(upload(emu, "b", too_big), 400, "INVALID_ARGUMENT")
        assert_google_error(upload(emu, "b", iter([too_big[:10_000], too_big[10_000:]])), 400, "INVALID_ARGUMENT")
        # lines that are not JSON objects with a "request" object
        for bad in (b"not json\n", b"[1, 2]\n", b'{"foo": {}}\n', b'{"request": "text"}\n', b""):
            assert_google_error(upload(emu, "c", ok + bad if bad else bad), 400, "INVALID_ARGUMENT")
        assert "b" not in emu.emulator.files and "c" not in emu.emulator.files
        assert os.listdir(Path(emu.emulator.data_dir) / "tmp") == []


# --------------------------------------------------------------------------- 2. create


def test_create_shape():
    with run_emulator(cfg(job_duration=5)) as emu:
        upload(emu, "ImageToImage.jsonl", (FIXTURES / "requests_example.jsonl").read_bytes())
        r = create(emu, "ImageToImage.jsonl")
        assert r.status_code == 200, r.text
        res = r.json()
        expected = fixture_json("create_response.json")
        assert list(res) == list(expected)
        assert res["name"].isdigit() and len(res["name"]) >= 18
        assert res["displayName"] == "my-cloud-storage-batch-inference-job"
        assert res["model"].startswith("MaaS_Ge_")
        assert res["inputConfig"] == {"instancesFormat": "jsonl", "gcsSource": {"uris": ["ImageToImage.jsonl"]}}
        assert res["outputConfig"] == expected["outputConfig"]
        assert res["state"] == "JOB_STATE_PENDING" and res["modelVersionId"] == "1"
        assert US_Z.match(res["createTime"]) and res["updateTime"] == res["createTime"]
        other = create(emu, "ImageToImage.jsonl").json()["name"]
        assert other != res["name"]
        assert emu.emulator.jobs_created == 2 and set(emu.emulator.jobs) == {res["name"], other}


def test_create_validation():
    with run_emulator(cfg()) as emu:
        url = f"{prefix(emu)}/batchPredictionJobs"
        assert_google_error(create(emu, "missing.jsonl"), 404, "NOT_FOUND")
        upload(emu, "in.jsonl", make_jsonl(1))
        bads: list[Any] = []
        body = create_body("in.jsonl")
        body["inputConfig"]["instancesFormat"] = "csv"
        bads.append(body)
        body = create_body("in.jsonl")
        body["outputConfig"]["predictionsFormat"] = "bigquery"
        bads.append(body)
        body = create_body("in.jsonl")
        body["inputConfig"]["gcsSource"]["uris"] = ["in.jsonl"]
        bads.append(body)
        bads.append({**create_body("in.jsonl"), "model": "x"})
        bads.append({k: v for k, v in create_body("in.jsonl").items() if k != "displayName"})
        bads.append([1])
        for bad in bads:
            assert_google_error(requests.post(url, json=bad, headers=AUTH, timeout=T), 400, "INVALID_ARGUMENT")
        r = requests.post(url, data=b"{nope", headers=AUTH, timeout=T)
        assert_google_error(r, 400, "INVALID_ARGUMENT")
        assert emu.emulator.jobs_created == 0


# --------------------------------------------------------------------------- 3. get / lifecycle


def test_lifecycle_pending_running_succeeded():
    with run_emulator(cfg(job_duration=0.8)) as emu:
        job = submit(emu, (FIXTURES / "requests_example.jsonl").read_bytes())
        first = get_job(emu, job).json()
        assert first["state"] == "JOB_STATE_PENDING"
        assert "startTime" not in first and "outputInfo" not in first
        assert_google_error(content(emu, job), 400, "FAILED_PRECONDITION")
        seen = []
        deadline = time.monotonic() + 5
        while (res := get_job(emu, job).json())["state"] != "JOB_STATE_SUCCEEDED":
            seen.append(res["state"])
            if res["state"] == "JOB_STATE_RUNNING":
                assert US_Z.match(res["startTime"]) and "endTime" not in res
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "JOB_STATE_RUNNING" in seen
        assert seen.index("JOB_STATE_RUNNING") > 0  # PENDING came first
        expected = fixture_json("job_succeeded.json")
        assert list(res) == list(expected)
        assert res["error"] is None
        assert res["completionStats"] == {"successfulCount": "2", "failedCount": None}
        assert res["outputInfo"]["gcsOutputDirectory"] == (
            f"{emu.base_url}/v1/ai/batch/gemini/{EP}/batchPredictionJobs/{job}/content"
        )
        for key in ("createTime", "startTime", "endTime", "updateTime"):
            assert US_Z.match(res[key]), key
        assert res["createTime"] < res["startTime"] < res["endTime"] == res["updateTime"]
        assert emu.emulator.jobs[job].state == "JOB_STATE_SUCCEEDED"


@pytest.mark.parametrize("state", ["JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"])
def test_unsuccessful_final_states(state):
    with run_emulator(cfg(final_state=state, job_duration=0.05)) as emu:
        job, res = run_job(emu, make_jsonl(3))
        assert res["state"] == state
        assert isinstance(res["error"]["code"], int) and res["error"]["message"]
        assert "outputInfo" not in res
        stats = res["completionStats"]
        assert stats["successfulCount"] == "0"
        assert stats["failedCount"] is None or stats["failedCount"] == "3"
        assert_google_error(content(emu, job), 404, "NOT_FOUND")
        assert_google_error(content(emu, job, "media"), 404, "NOT_FOUND")


def test_set_job_state_and_admin_routes():
    with run_emulator(cfg(job_duration=60)) as emu:
        job = submit(emu, make_jsonl(2))
        emu.emulator.set_job_state(job, "JOB_STATE_FAILED", {"code": 8, "message": "quota"})
        res = get_job(emu, job).json()
        assert res["state"] == "JOB_STATE_FAILED" and res["error"] == {"code": 8, "message": "quota"}
        assert "endTime" in res
        with pytest.raises(ValueError):
            emu.emulator.set_job_state(job, "")
        emu.emulator.set_job_state(job, "JOB_STATE_SOMETHING_NEW")  # undocumented states too
        assert get_job(emu, job).json()["state"] == "JOB_STATE_SOMETHING_NEW"
        assert_google_error(content(emu, job), 400, "FAILED_PRECONDITION")
        # the same over HTTP, for an emulator in another process
        admin = f"{emu.base_url}/_emulator"
        assert requests.get(f"{admin}/health", timeout=T).json() == {"status": "ok"}
        assert requests.get(f"{admin}/state", timeout=T).status_code == 401
        r = requests.post(f"{admin}/jobs/{job}/state", json={"state": "JOB_STATE_SUCCEEDED"}, headers=AUTH, timeout=T)
        assert r.json()["state"] == "JOB_STATE_SUCCEEDED"
        assert len(lines_of(content(emu, job, "media").content)) == 2
        assert requests.post(f"{admin}/jobs/{job}/expire", headers=AUTH, timeout=T).status_code == 200
        assert content(emu, job).status_code == 410
        r = requests.post(f"{admin}/config", json={"rate_429": 1.0}, headers=AUTH, timeout=T)
        assert r.json() == {"rate_429": 1.0}
        assert get_job(emu, job).status_code == 429
        r = requests.post(f"{admin}/config", json={"port": 1}, headers=AUTH, timeout=T)
        assert r.status_code == 400
        state = requests.get(f"{admin}/state", headers=AUTH, timeout=T).json()
        assert state["jobs"] == {job: "JOB_STATE_SUCCEEDED"} and state["jobs_created"] == 1


# --------------------------------------------------------------------------- 4. results


def test_results_metadata_and_media():
    data = (FIXTURES / "requests_example.jsonl").read_bytes()
    with run_emulator(cfg()) as emu:
        job, _ = run_job(emu, data)
        default = content(emu, job)
        assert default.status_code == 200
        meta = default.json()
        assert content(emu, job, "json").json() == meta  # alt defaults to json
        expected = fixture_json("results_metadata.json")
        assert list(meta) == list(expected) and "md5Hash" not in meta
        assert meta["componentCount"] == 1
        assert all(isinstance(v, str) for k, v in meta.items() if k != "componentCount")
        media = content(emu, job, "media")
        assert media.status_code == 200
        assert media.headers["Content-Length"] == meta["size"] == str(len(media.content))
        assert meta["crc32c"] == crc32c_b64(media.content)
        assert_google_error(content(emu, job, "xml"), 400, "INVALID_ARGUMENT")

        fixture_line = lines_of((FIXTURES / "results_example.jsonl").read_bytes())[0]
        lines = lines_of(media.content)
        assert len(lines) == 2
        for line in lines:
            assert list(line) == list(fixture_line)  # request, response, processed_time, status
            assert line["status"] == "" and US_OFFSET.match(line["processed_time"])
            resp = line["response"]
            assert set(resp) == set(fixture_line["response"])
            assert US_Z.match(resp["createTime"]) and resp["responseId"]
            cand = resp["candidates"][0]
            assert set(cand) == set(fixture_line["response"]["candidates"][0])
            assert cand["finishReason"] == "STOP" and cand["content"]["role"] == "model"
            assert isinstance(cand["score"], float) and isinstance(cand["avgLogprobs"], float)
            for text in [p["text"] for p in line["request"]["contents"][0]["parts"] if p["text"]]:
                assert text in cand["content"]["parts"][0]["text"]
            usage = resp["usageMetadata"]
            assert set(usage) <= set(fixture_line["response"]["usageMetadata"])
            assert usage["trafficType"] == "ON_DEMAND"
            for key in ("promptTokenCount", "candidatesTokenCount", "totalTokenCount", "thoughtsTokenCount"):
                assert isinstance(usage[key], int)
        # deterministic answers: a second download is byte-identical
        assert content(emu, job, "media").content == media.content


def test_normalisation_matches_the_documented_results():
    data = (FIXTURES / "requests_example.jsonl").read_bytes()
    documented = lines_of((FIXTURES / "results_example.jsonl").read_bytes())
    with run_emulator(cfg()) as emu:
        job, _ = run_job(emu, data)
        lines = lines_of(content(emu, job, "media").content)
        as_key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
        assert sorted(as_key(x["request"]) for x in lines) == sorted(as_key(x["request"]) for x in documented)
        for line in lines:
            for part in line["request"]["contents"][0]["parts"]:
                assert list(part)[:2] == ["file_data", "text"]
                assert (part["file_data"] is None) != (part["text"] is None)
    with run_emulator(cfg(normalise_requests=False)) as emu:
        job, _ = run_job(emu, data)
        echoed = [x["request"] for x in lines_of(content(emu, job, "media").content)]
        originals = [json.loads(x)["request"] for x in data.splitlines()]
        assert sorted(map(as_key, echoed)) == sorted(map(as_key, originals))


def test_shuffle_is_seeded_and_keeps_every_request():
    data = make_jsonl(20)
    orders = []
    for _ in range(2):
        with run_emulator(cfg(seed=7)) as emu:
            job, _ = run_job(emu, data)
            orders.append(result_texts(lines_of(content(emu, job, "media").content)))
    assert orders[0] == orders[1]  # deterministic for a seed
    assert orders[0] != input_texts(data)
    assert sorted(orders[0]) == sorted(input_texts(data))
    with run_emulator(cfg(shuffle_results=False)) as emu:
        job, _ = run_job(emu, data)
        assert result_texts(lines_of(content(emu, job, "media").content)) == input_texts(data)


def test_fail_every_with_partially_succeeded():
    data = make_jsonl(10)
    with run_emulator(cfg(final_state="JOB_STATE_PARTIALLY_SUCCEEDED", fail_every=3)) as emu:
        job, res = run_job(emu, data)
        assert res["state"] == "JOB_STATE_PARTIALLY_SUCCEEDED" and res["error"] is None
        assert res["completionStats"] == {"successfulCount": "7", "failedCount": "3"}
        lines = lines_of(content(emu, job, "media").content)
        assert len(lines) == 10
        failed = [line for line in lines if line["status"]]
        assert {result_texts([x])[0] for x in failed} == {input_texts(data)[i] for i in (2, 5, 8)}
        for line in failed:
            assert "response" not in line and isinstance(line["status"], str)
        for line in lines:
            assert ("response" in line) == (line["status"] == "")
    with run_emulator(cfg(fail_every=5)) as emu:  # also usable with SUCCEEDED
        job, res = run_job(emu, data)
        assert res["completionStats"] == {"successfulCount": "8", "failedCount": "2"}


def test_image_output_and_padding():
    with run_emulator(cfg(image_output=True, result_padding_bytes=100_000)) as emu:
        job, _ = run_job(emu, make_jsonl(5))
        media = content(emu, job, "media")
        assert len(media.content) > 5 * 100_000
        assert content(emu, job).json()["crc32c"] == crc32c_b64(media.content)
        for line in lines_of(media.content):
            parts = line["response"]["candidates"][0]["content"]["parts"]
            assert "text" in parts[0]
            image = parts[1]["inlineData"]
            assert image["mimeType"] == "image/png"
            png = base64.b64decode(image["data"])
            assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR" and png.endswith(b"IEND\xaeB`\x82")


def test_results_and_files_expire():
    with run_emulator(cfg(job_duration=0.05, retention_seconds=0.6)) as emu:
        job, _ = run_job(emu, make_jsonl(2))
        assert content(emu, job, "media").status_code == 200
        time.sleep(0.7)
        msg = assert_google_error(content(emu, job, "media"), 410, "NOT_FOUND")
        assert "expired" in msg
        assert get_job(emu, job).json()["state"] == "JOB_STATE_SUCCEEDED"  # the job itself stays
        assert_google_error(create(emu, "in.jsonl"), 404, "NOT_FOUND")  # the upload is gone too
    with run_emulator(cfg()) as emu:
        job, _ = run_job(emu, make_jsonl(2))
        emu.emulator.expire_results(job)
        assert_google_error(content(emu, job), 410, "NOT_FOUND")


# --------------------------------------------------------------------------- auth, routing, logging


def test_auth_endpoints_and_unknown_paths():
    with run_emulator(cfg(forbidden_endpoints=("locked",), extra_endpoints=("other",))) as emu:
        url = f"{prefix(emu)}/batchPredictionJobs/123"
        assert_google_error(requests.get(url, timeout=T), 401, "UNAUTHENTICATED")
        assert_google_error(
            requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=T), 401, "UNAUTHENTICATED"
        )
        assert_google_error(requests.get(url, headers={"Authorization": KEY}, timeout=T), 401, "UNAUTHENTICATED")
        assert_google_error(requests.get(url, headers=AUTH, timeout=T), 404, "NOT_FOUND")
        r = requests.get(f"{prefix(emu, 'locked')}/batchPredictionJobs/123", headers=AUTH, timeout=T)
        assert_google_error(r, 403, "PERMISSION_DENIED")
        r = requests.get(f"{prefix(emu, 'nowhere')}/batchPredictionJobs/123", headers=AUTH, timeout=T)
        assert_google_error(r, 404, "NOT_FOUND")
        job = submit(emu, make_jsonl(1))
        # a job is only visible under the endpoint that created it
        assert get_job(emu, job).status_code == 200
        r = requests.get(f"{prefix(emu, 'other')}/batchPredictionJobs/{job}", headers=AUTH, timeout=T)
        assert_google_error(r, 404, "NOT_FOUND")
        for path in (
            f"batchPredictionJobs/{job}x",
            "batchPredictionJobs/..%2F..",
            "batchPredictionJobs/a/content",
            "nope",
        ):
            assert_google_error(requests.get(f"{prefix(emu)}/{path}", headers=AUTH, timeout=T), 404, "NOT_FOUND")
        r = requests.delete(f"{prefix(emu)}/batchPredictionJobs/{job}", headers=AUTH, timeout=T)
        assert_google_error(r, 404, "NOT_FOUND")


def test_access_log_never_holds_the_key():
    with run_emulator(cfg()) as emu:
        job = submit(emu, make_jsonl(1))
        get_job(emu, job)
        requests.get(
            f"{prefix(emu)}/batchPredictionJobs/{job}?key={KEY}", headers={**AUTH, "User-Agent": f"ua {KEY}"}, timeout=T
        )
        requests.get(
            f"{prefix(emu)}/batchPredictionJobs/{job}", headers={"Authorization": "Bearer wrong-key"}, timeout=T
        )
        log = emu.emulator.access_log
        assert len(log) == 5 == emu.emulator.request_count
        assert KEY not in repr(log) and "wrong-key" not in repr(log)
        assert {"method", "path_qs", "status", "user_agent"} <= set(log[0])
        assert [e["status"] for e in log] == [200, 200, 200, 200, 401]
        assert log[1]["method"] == "POST" and log[1]["path_qs"].endswith("/batchPredictionJobs")


def test_client_gone_mid_upload_and_oversized_create_body():
    with run_emulator(cfg()) as emu:
        host, port = emu.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=T) as sock:
            sock.sendall(
                f"POST /v1/ai/batch/gemini/{EP}/files?uploadType=media&name=cut.jsonl HTTP/1.1\r\n"
                f"Host: {host}\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 5000000\r\n\r\n".encode()
                + make_jsonl(50)
            )
            time.sleep(0.1)
        deadline = time.monotonic() + 3
        while not emu.emulator.access_log:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert emu.emulator.access_log[0]["status"] == 0
        assert "cut.jsonl" not in emu.emulator.files
        assert os.listdir(Path(emu.emulator.data_dir) / "tmp") == []
        upload(emu, "in.jsonl", make_jsonl(1))
        body = {**create_body("in.jsonl"), "displayName": "x" * 2_000_000}
        r = requests.post(f"{prefix(emu)}/batchPredictionJobs", json=body, headers=AUTH, timeout=T)
        assert r.status_code in (400, 413) and r.json()["error"]["status"] == "INVALID_ARGUMENT"
        assert emu.emulator.jobs_created == 0


def test_latency_is_added():
    with run_emulator(cfg(latency=0.3)) as emu:
        started = time.monotonic()
        assert get_job(emu, "1").status_code == 404
        assert time.monotonic() - started >= 0.3


# --------------------------------------------------------------------------- fault injection


def _statuses(config: EmulatorConfig, n: int = 30) -> list[Any]:
    out: list[Any] = []
    with run_emulator(config) as emu:
        for _ in range(n):  # no job: every GET is a 404 unless a fault hits
            try:
                r = get_job(emu, "123")
                out.append((r.status_code, r.headers.get("Content-Type", "").split(";")[0]))
            except requests.ConnectionError:
                out.append("reset")
        # admin routes are never faulted
        assert requests.get(f"{emu.base_url}/_emulator/health", timeout=T).status_code == 200
    return out


def test_fault_429_deterministic_with_retry_after():
    a = _statuses(cfg(rate_429=0.5, seed=3))
    assert a == _statuses(cfg(rate_429=0.5, seed=3))
    assert a != _statuses(cfg(rate_429=0.5, seed=4))
    assert {s for s, _ in a} == {404, 429}
    with run_emulator(cfg(rate_429=1.0, retry_after=2.5)) as emu:
        r = get_job(emu, "1")
        assert_google_error(r, 429, "RESOURCE_EXHAUSTED")
        assert r.headers["Retry-After"] == "3"


def test_fault_5xx_sometimes_not_json():
    a = _statuses(cfg(rate_5xx=1.0, seed=1), n=40)
    assert a == _statuses(cfg(rate_5xx=1.0, seed=1), n=40)
    assert {s for s, _ in a} == {500, 503}
    types = {t for _, t in a}
    assert "application/json" in types and types & {"text/html", "text/plain"}
    with run_emulator(cfg(rate_5xx=0.3, seed=9)) as emu:
        codes = [get_job(emu, "1").status_code for _ in range(30)]
        assert 404 in codes and {500, 503} & set(codes)


def test_fault_reset_and_no_side_effect_on_create():
    a = _statuses(cfg(rate_reset=0.5, seed=2))
    assert a == _statuses(cfg(rate_reset=0.5, seed=2)) and "reset" in a and (404, "application/json") in a
    for fault in ({"rate_reset": 1.0}, {"rate_429": 1.0}, {"rate_5xx": 1.0}):
        with run_emulator(cfg(**fault)) as emu:
            emu.emulator.config.rate_reset = emu.emulator.config.rate_429 = emu.emulator.config.rate_5xx = 0
            assert upload(emu, "in.jsonl", make_jsonl(1)).status_code == 200
            for key, value in fault.items():
                setattr(emu.emulator.config, key, value)
            with contextlib.suppress(requests.ConnectionError):
                assert create(emu, "in.jsonl").status_code >= 429
            assert emu.emulator.jobs_created == 0 and not emu.emulator.jobs
            assert emu.emulator.access_log[-1]["fault"]


def test_fault_create_false_spares_create():
    with run_emulator(cfg(fault_create=False)) as emu:
        assert upload(emu, "in.jsonl", make_jsonl(1)).status_code == 200
        emu.emulator.config.rate_429 = 1.0
        r = create(emu, "in.jsonl")
        assert r.status_code == 200
        assert get_job(emu, r.json()["name"]).status_code == 429


def test_fault_create_lost_response_creates_the_job():
    with run_emulator(cfg(rate_create_lost_response=1.0)) as emu:
        assert upload(emu, "in.jsonl", make_jsonl(1)).status_code == 200
        with pytest.raises(requests.ConnectionError):
            create(emu, "in.jsonl")
        assert emu.emulator.jobs_created == 1 and len(emu.emulator.jobs) == 1
        assert emu.emulator.access_log[-1]["fault"] == "lost_create_response"


def test_fault_slow_past_the_client_timeout():
    with run_emulator(cfg(slow_seconds=0.6)) as emu:
        assert upload(emu, "in.jsonl", make_jsonl(1)).status_code == 200
        emu.emulator.config.rate_slow = 1.0
        started = time.monotonic()
        with pytest.raises(requests.Timeout):
            create(emu, "in.jsonl", timeout=0.2)
        time.sleep(0.7)
        assert emu.emulator.jobs_created == 0  # the client gave up: no job
        r = create(emu, "in.jsonl")  # a patient client gets its job
        assert r.status_code == 200 and time.monotonic() - started >= 1.2
        assert emu.emulator.jobs_created == 1


def test_fault_truncate_and_corrupt_downloads():
    with run_emulator(cfg(result_padding_bytes=50_000)) as emu:
        job, _ = run_job(emu, make_jsonl(4))
        good = content(emu, job, "media").content
        meta = content(emu, job).json()
        emu.emulator.config.rate_truncate_download = 1.0
        assert content(emu, job).json() == meta  # alt=json is not touched
        r = content(emu, job, "media", stream=True)
        assert r.headers["Content-Length"] == meta["size"]
        with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
            r.content  # noqa: B018
        assert emu.emulator.access_log[-1]["fault"] == "truncate_download"
        emu.emulator.config.rate_truncate_download = 0.0
        emu.emulator.config.rate_corrupt_download = 1.0
        bad = content(emu, job, "media").content
        assert len(bad) == len(good) and bad != good
        assert crc32c_b64(bad) != meta["crc32c"]
        # a ranged retry is honoured too
        part = content(emu, job, "media", headers={"Range": "bytes=100-"})
        assert part.status_code == 206 and len(part.content) == len(good) - 100
        emu.emulator.config.rate_corrupt_download = 0.0
        assert content(emu, job, "media").content == good


def test_fault_wrong_md5_on_upload():
    data = make_jsonl(3)
    with run_emulator(cfg(rate_wrong_md5=1.0)) as emu:
        res = upload(emu, "in.jsonl", data).json()
        real = base64.b64encode(hashlib.md5(data).digest()).decode()
        assert res["md5Hash"] != real and len(base64.b64decode(res["md5Hash"])) == 16
        assert res["crc32c"] == crc32c_b64(data)
        assert emu.emulator.files["in.jsonl"]["md5Hash"] == real


# --------------------------------------------------------------------------- running it


def test_run_emulator_handle_connection_and_clean_stop():
    before = {t.ident for t in threading.enumerate()}
    with run_emulator(cfg()) as emu:
        host, port = emu.base_url.removeprefix("http://").split(":")
        conn = json.loads(emu.connection_json())
        assert conn == {"conn_type": "maas", "host": emu.base_url, "password": KEY, "extra": {"endpoint": EP}}
        assert isinstance(emu.emulator, MaaSEmulator) and emu.config.api_key == KEY
        uri = emu.connection_uri()
        assert uri == f"maas://http://:{KEY}@{host}%3A{port}/?endpoint={EP}"
        data_dir = Path(emu.emulator.data_dir)
        assert data_dir.is_dir()
    assert {t.ident for t in threading.enumerate()} <= before
    assert not data_dir.exists()
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=1):
        pass


def test_connection_uri_quotes_the_key_like_airflow():
    # Airflow's Connection(uri=...) reads this back as host "http://127.0.0.1:PORT" and the raw key
    # (checked against Connection.get_uri() of apache-airflow 3.3; importing Airflow here is slow).
    with run_emulator(cfg(api_key="k/y@:%")) as emu:
        hostport = emu.base_url.removeprefix("http://").replace(":", "%3A")
        assert emu.connection_uri() == f"maas://http://:k%2Fy%40%3A%25@{hostport}/?endpoint={EP}"
        assert json.loads(emu.connection_json())["password"] == "k/y@:%"


async def test_start_and_stop_in_a_running_loop():
    import aiohttp

    emulator = MaaSEmulator(cfg())
    base_url = await emulator.start()
    try:
        url = f"{base_url}/v1/ai/batch/gemini/{EP}/batchPredictionJobs/1"
        async with aiohttp.ClientSession() as session, session.get(url, headers=AUTH) as r:
            assert r.status == 404 and (await r.json())["error"]["status"] == "NOT_FOUND"
    finally:
        await emulator.stop()
    assert not Path(emulator.data_dir).exists()


def test_data_dir_holds_uploads_and_results(tmp_path):
    with run_emulator(cfg(data_dir=str(tmp_path))) as emu:
        job, _ = run_job(emu, make_jsonl(2))
        content(emu, job, "media")
    assert len(list((tmp_path / "uploads").iterdir())) == 1
    assert (tmp_path / "results" / f"{job}.jsonl").exists()


def test_cli_help_lists_every_setting():
    out = subprocess.run(
        [sys.executable, "-m", "airflow_provider_maas.emulator", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=30,
        check=True,
    ).stdout
    for flag in ("--port", "--api-key", "--endpoint", "--job-duration", "--final-state", "--fail-every", "--latency",
                 "--no-shuffle", "--no-normalise", "--image-output", "--seed", "--rate-429", "--rate-5xx",
                 "--rate-reset", "--rate-slow", "--rate-truncate-download", "--rate-corrupt-download",
                 "--rate-wrong-md5", "--rate-create-lost-response", "--no-fault-create", "--forbidden-endpoint",
                 "--result-padding-bytes", "--retention-seconds", "--ready-file", "--data-dir", "--fault"):  # fmt: skip
        assert flag in out, flag


def start_cli(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen[str], str]:
    """``maas-emulator`` in a subprocess (key KEY, endpoint EP): the process and its base URL."""
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_maas.emulator",
            "--port",
            "0",
            "--ready-file",
            str(ready),
            "--api-key",
            KEY,
            "--endpoint",
            EP,
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(proc.communicate())
        time.sleep(0.05)
    return proc, ready.read_text().strip()


def test_cli_serves_until_sigterm(tmp_path):
    proc, base_url = start_cli(tmp_path, "--job-duration", "0.1", "--no-shuffle")
    try:
        assert re.match(r"^http://127\.0\.0\.1:\d+$", base_url)
        r = requests.get(f"{base_url}/v1/ai/batch/gemini/{EP}/batchPredictionJobs/1", headers=AUTH, timeout=T)
        assert_google_error(r, 404, "NOT_FOUND")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    conn = json.dumps(
        {"conn_type": "maas", "host": base_url, "password": KEY, "extra": {"endpoint": EP}}, separators=(",", ":")
    )
    assert f"export AIRFLOW_CONN_MAAS_DEFAULT='{conn}'" in out
    assert f"airflow connections add maas_default --conn-json '{conn}'" in out
