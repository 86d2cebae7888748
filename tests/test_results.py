from __future__ import annotations

import base64
import io
import json
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_maas.batch.answers.answer_lines import reader
from airflow_provider_maas.batch.answers.matching import AnswerStore
from airflow_provider_maas.batch.answers.results import (
    ResultRecord,
    ResultsFormatError,
    ResultSummary,
    extract_images,
    iter_results,
    parse_result_line,
    request_digest,
    summarize,
)
from airflow_provider_maas.batch.inputs.lines import iter_line_batches
from tests.helpers import ShortReads, record_input_assets

FIXTURES = Path(__file__).parent / "fixtures"


def test_results_module_imports_nothing_from_airflow():
    code = (
        "import sys, airflow_provider_maas.batch.answers.results\n"
        "bad = [m for m in sys.modules if m == 'airflow' or m.startswith(('airflow.', 'airflow_provider_maas.exc'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_iter_results_on_the_fixture():
    with open(FIXTURES / "results_example.jsonl", "rb") as handle:
        records = list(iter_results(handle))
    assert [r.line_number for r in records] == [1, 2]
    first = records[0]
    assert first.succeeded and first.error is None and first.status == ""
    assert first.text is not None and first.text.startswith("Here are the objects visible in the image:")
    assert first.text.endswith("*   Pen")
    assert first.finish_reason == "STOP"
    assert first.usage == {
        "candidatesTokenCount": 108,
        "totalTokenCount": 2163,
        "thoughtsTokenCount": 243,
        "promptTokenCount": 1812,
    }
    assert first.processed_time == "2026-01-29T02:15:47.048543+00:00"
    assert first.request is not None and first.request["generationConfig"] == {"temperature": 0.4}


def result_line(request: dict[str, Any], answer: str | None = "ok", status: str = "", **usage: int) -> bytes:
    line: dict[str, Any] = {"request": request, "processed_time": "2026-01-01T00:00:00+00:00", "status": status}
    if answer is not None:
        parts = [{"text": "thinking...", "thought": True}, {"text": answer}, {"text": "!"}]
        line["response"] = {
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}],
            "usageMetadata": {"trafficType": "ON_DEMAND", **usage},
        }
    return json.dumps(line).encode() + b"\n"


def test_record_fields_and_failures():
    ok = parse_result_line(result_line({"contents": [1]}, "yes", promptTokenCount=3), 5)
    assert (ok.line_number, ok.text, ok.succeeded, ok.usage) == (5, "yes!", True, {"promptTokenCount": 3})
    failed = parse_result_line(result_line({"contents": [1]}, None, status="RESOURCE_EXHAUSTED: quota"), 1)
    assert (failed.succeeded, failed.error, failed.text, failed.finish_reason) == (
        False,
        "RESOURCE_EXHAUSTED: quota",
        None,
        None,
    )
    no_response = parse_result_line(b'{"request": {}, "status": ""}', 1)
    assert (no_response.succeeded, no_response.error) == (False, "no response")
    rpc_status = parse_result_line(b'{"status": {"code": 8, "message": "Quota exceeded"}}', 1)
    assert rpc_status.error == "Quota exceeded"
    errored_with_response = parse_result_line(result_line({}, "partial", status="CANCELLED"), 1)
    assert not errored_with_response.succeeded


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"{not json", "results line 3: not valid JSON"),
        (b"[1]", "results line 3: a JSON list, not an object"),
        (b'{"status": "\xff"}', "results line 3: not valid JSON"),
    ],
)
def test_bad_result_lines(line: bytes, expected: str):
    data = result_line({}) + b"\n" + line + b"\n"
    with pytest.raises(ResultsFormatError) as info:
        list(iter_results(io.BytesIO(data)))
    assert str(info.value).startswith(expected)
    assert info.value.line_number == 3
    assert isinstance(info.value, ValueError)


def test_summary_counts_and_tokens():
    lines = [
        result_line({"n": 1}, promptTokenCount=10, candidatesTokenCount=5, thoughtsTokenCount=2, totalTokenCount=17),
        result_line({"n": 2}, promptTokenCount=1, candidatesTokenCount=1, totalTokenCount=2),
        result_line({"n": 3}, None, status="INTERNAL"),
        b'{"request": {"n": 4}, "status": ""}\n',
    ]
    records = list(iter_results(io.BytesIO(b"".join(lines))))
    assert summarize(records) == {
        "requests": 4,
        "succeeded": 2,
        "failed": 2,
        "prompt_tokens": 11,
        "candidates_tokens": 6,
        "thoughts_tokens": 2,
        "total_tokens": 19,
        "cost_unknown_answers": 0,
    }
    summary = ResultSummary()
    for record in records * 3:
        summary.add(record)
    assert summary.failure_samples == [(3, "INTERNAL"), (4, "no response")] * 2 + [(3, "INTERNAL")]
    assert summary.as_dict()["requests"] == 12 and summary.missing == 0
    assert summarize([]) == dict.fromkeys(summary.as_dict(), 0)


def test_iter_line_batches_with_tiny_chunks():
    rng = random.Random(7)
    data = b"".join(rng.choice([b"", b" ", b"a" * rng.randint(1, 30)]) + b"\n" for _ in range(300)) + b"tail"
    for chunk_size in (1, 2, 3, 7, 64, 1 << 20):
        batches = list(iter_line_batches(io.BytesIO(data), chunk_size=chunk_size))
        lines = [line for batch, _ in batches for line in batch]
        assert b"\n".join(lines) == data
        assert [terminated for _, terminated in batches].count(False) == 1 and not batches[-1][1]
    assert list(iter_line_batches(io.BytesIO(b""))) == []
    with pytest.raises(ValueError, match="line 2 is longer than 10 bytes"):
        list(iter_line_batches(io.BytesIO(b"ok\n" + b"x" * 50), chunk_size=4, max_line_bytes=10))


def test_big_lines_stream():
    big = result_line({"contents": ["x"]}, "y" * 300_000)
    records = list(iter_results(ShortReads(big * 3, most=4096)))
    assert [len(r.text or "") for r in records] == [300_001] * 3


# --------------------------------------------------------------------------- ordering


def request(i: int) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": f"question {i % 10}"}]}]}


def echo(req: dict[str, Any]) -> dict[str, Any]:
    """The request as the service echoes it: null fields added, keys reordered."""
    contents = [
        {"parts": [{"file_data": None, **part} for part in content["parts"]], "role": content["role"]}
        for content in req["contents"]
    ]
    return {"generationConfig": None, "contents": contents}


def test_match_across_sources():
    # 14 input lines; lines 11-14 repeat the requests of lines 1-4 (identical requests).
    inputs = [(n, json.dumps({"request": request(n - 1)}).encode() + b"\n", request(n - 1)) for n in range(1, 15)]
    missing_line, failed_line = 6, 8
    result_lines = []
    for n, _, req in inputs:
        if n == missing_line:
            continue
        answer, status = (None, "INTERNAL: boom") if n == failed_line else (f"answer to {req}", "")
        result_lines.append(result_line(echo(req), answer, status, promptTokenCount=n))
    strays = [result_line({"contents": [{"parts": [{"text": "never asked"}]}]}), b'{"status": "no request"}\n']
    result_lines += strays  # results matching no input request
    random.Random(3).shuffle(result_lines)
    sources = [b"".join(result_lines[:5]), b"\n" + b"".join(result_lines[5:9]), b"".join(result_lines[9:])]
    files = {number: io.BytesIO(data) for number, data in enumerate(sources)}
    with AnswerStore() as store:
        assert sum(store.add(f"results {n}", handle).lines for n, handle in files.items()) == len(result_lines)
        read = reader(files, store.sources)
        items = list(store.match(iter(inputs), lambda item: request_digest(item[2]), shared=False))
        left = store.leftovers(shared=False)

    assert [item[0] for item, _, _ in items] == list(range(1, 15))
    assert [repeated for _, _, repeated in items] == [False] * 10 + [True] * 4
    assert [item[0] for item, answer, _ in items if answer is None] == [missing_line]
    assert [item[0] for item, answer, _ in items if answer and not answer.succeeded] == [failed_line]
    used = [read(answer) for _, answer, _ in items if answer is not None]
    for (_, _, req), answer in ((item, answer) for item, answer, _ in items if answer is not None):
        assert json.loads(read(answer))["request"] == echo(req)
    # Each result line is used once, identical requests included.
    assert len(used) == len(set(used)) == 13 and all(line + b"\n" in result_lines for line in used)
    assert (left.unmatched, left.duplicates) == (2, 0)  # the stray and the line without a request
    assert left.first_unmatched is not None


def test_a_second_success_is_a_duplicate_and_a_superseded_failure_is_not():
    lines = [result_line(echo(request(1)), None, "INTERNAL"), result_line(echo(request(1)), "a")]
    lines += [result_line(echo(request(1)), "b"), result_line(echo(request(2)), "c")]
    for shared, duplicates in ((True, 1), (False, 0)):
        with AnswerStore() as store:
            store.add("r", io.BytesIO(b"".join(lines)))
            twice = [request(1), request(1), request(2)]
            answers = [answer for _, answer, _ in store.match(twice, request_digest, shared=shared)]
            left = store.leftovers(shared=shared)
        assert all(answer is not None and answer.succeeded for answer in answers)
        assert [answer.line for answer in answers if answer] == ([2, 2, 4] if shared else [2, 3, 4])
        assert (left.unmatched, left.duplicates, left.first_unmatched) == (0, duplicates, None)


def test_reading_a_matched_line_notices_a_changed_file():
    with AnswerStore() as store:
        store.add("results s", io.BytesIO(result_line(request(1))))
        ((_, answer, _),) = store.match([request(1)], request_digest, shared=False)
        with pytest.raises(ResultsFormatError, match="results s line 1: read 3 bytes"):
            reader({0: io.BytesIO(b"abc")}, store.sources)(answer)


# --------------------------------------------------------------------------- images


def tiny_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


def image_results() -> bytes:
    png = base64.b64encode(tiny_png()).decode()
    parts = [
        {"text": "Here you go"},
        {"inlineData": {"mimeType": "image/png", "data": png}},
        {"inline_data": {"mime_type": "image/jpeg", "data": base64.b64encode(b"jpeg!").decode()}},
        {"inlineData": {"mimeType": "text/plain", "data": base64.b64encode(b"not an image").decode()}},
    ]
    second = {"content": {"parts": [{"inlineData": {"mimeType": "image/tiff", "data": "AAEC"}}]}}
    lines = [
        {"request": {}, "response": {"candidates": [{"content": {"parts": parts}}, second]}, "status": ""},
        {"request": {}, "status": "FAILED"},
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_extract_images_beside_the_results(tmp_path: Path):
    from airflow_provider_maas.batch.answers.merge import extract_images_beside

    results = tmp_path / "out" / "job42.jsonl"
    results.parent.mkdir()
    results.write_bytes(image_results())
    uris = extract_images_beside(results)
    out = tmp_path / "out" / "job42_images"
    assert uris == [(out / name).as_uri() for name in ("image-1-0-1.png", "image-1-0-2.jpg", "image-1-1-0.bin")]
    assert (out / "image-1-0-1.png").read_bytes() == tiny_png()
    assert (out / "image-1-0-2.jpg").read_bytes() == b"jpeg!"
    assert (out / "image-1-1-0.bin").read_bytes() == b"\x00\x01\x02"
    assert sorted(p.name for p in out.iterdir()) == ["image-1-0-1.png", "image-1-0-2.jpg", "image-1-1-0.bin"]


def test_extract_images_with_a_writer():
    written: dict[str, bytes] = {}
    names = extract_images(io.BytesIO(image_results()), written.__setitem__)
    assert names == list(written) == ["image-1-0-1.png", "image-1-0-2.jpg", "image-1-1-0.bin"]
    with pytest.raises(ValueError, match="without path separators"):
        extract_images(io.BytesIO(b""), written.__setitem__, prefix="../x")


@pytest.mark.parametrize("data", ["@@", "AAE", "AA-_"])
def test_extract_images_base64(data: str):
    line = {
        "response": {"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": data}}]}}]}
    }
    if data == "AA-_":  # URL-safe alphabet is accepted
        written: dict[str, bytes] = {}
        extract_images(io.BytesIO(json.dumps(line).encode()), written.__setitem__)
        assert written == {"image-1-0-0.png": base64.urlsafe_b64decode(data)}
        return
    with pytest.raises(ResultsFormatError, match="results line 1: image data is not valid base64"):
        extract_images(io.BytesIO(json.dumps(line).encode()), lambda name, data: None)


def test_record_is_frozen():
    record = ResultRecord(1, None, None, "", None, None, {}, None)
    with pytest.raises(AttributeError):
        record.status = "x"  # type: ignore[misc]


def test_identical_requests_in_later_blocks_take_the_next_answers(monkeypatch):
    import airflow_provider_maas.batch.answers.matching as matching

    monkeypatch.setattr(matching, "_MATCH_BLOCK", 2)  # the rank of a request carries over from block to block
    lines = [result_line(echo(request(1)), text) for text in ("a", "b", "c")] + [result_line(echo(request(2)), "d")]
    with AnswerStore() as store:
        store.add("r", io.BytesIO(b"".join(lines)))
        asked = [request(1), request(2), request(1), request(1), request(1)]
        matched = list(store.match(asked, request_digest, shared=False))
        left = store.leftovers(shared=False)
    assert [answer.line if answer else None for _, answer, _ in matched] == [1, 4, 2, 3, None]
    assert [repeated for _, _, repeated in matched] == [False, False, True, True, True]
    assert (left.unmatched, left.duplicates) == (0, 0)


def test_blocks_after_the_first_count_identical_requests_through_the_file(monkeypatch):
    import airflow_provider_maas.batch.answers.matching as matching

    monkeypatch.setattr(matching, "_MATCH_BLOCK", 2)
    lines = [result_line(echo(request(1)), "a"), result_line(echo(request(1)), None, "INTERNAL")]
    lines += [result_line(echo(request(3)), "b"), result_line(echo(request(9)), "never asked")]
    with AnswerStore() as store:
        store.add("r", io.BytesIO(b"".join(lines)))
        asked = [request(1), request(1), request(3), request(1)]
        matched = list(store.match(asked, request_digest, shared=False))
        left = store.leftovers(shared=False)
    # Once its one success is taken, an identical request gets the failure (given twice: leftovers ask the file).
    assert [answer.line if answer else None for _, answer, _ in matched] == [1, 2, 3, 2]
    assert (left.unmatched, left.duplicates, left.first_unmatched) == (1, 0, (0, 4))
    with AnswerStore() as empty:  # nothing indexed (the dedupe pass): only whether an identical request came first
        flags = [
            repeated
            for _, answer, repeated in empty.match(
                [request(n) for n in (1, 2, 1, 3, 2, 1)], request_digest, shared=True
            )
        ]
    assert flags == [False, False, True, False, True, True]


def test_a_shard_is_merged_in_three_statements_and_its_leftovers_are_its_own(monkeypatch):
    import airflow_provider_maas.batch.answers.matching as matching

    calls: list[str] = []
    for name in ("execute", "executemany"):
        method = getattr(matching._Db, name)
        monkeypatch.setattr(
            matching._Db, name, lambda db, *args, method=method: calls.append(args[0]) or method(db, *args)
        )
    found = []
    with AnswerStore() as store:
        store.build_index()
        for shard in range(3):
            asked = [request(n) for n in range(shard * 10, shard * 10 + 10)]
            lines = [result_line(echo(req), "a") for req in reversed(asked)]
            lines += (
                [result_line({"contents": [{"parts": [{"text": "never asked"}]}]})] if shard else []
            )  # leftovers ask the file
            before = len(calls)
            store.clear()  # a result line of one shard never answers a request of another
            store.add(f"shard {shard}", io.BytesIO(b"".join(lines)))
            answers = [answer for _, answer, _ in store.match(asked, request_digest, shared=False)]
            paired = len(calls) - before
            left = store.leftovers(shared=False)
            found.append((paired, all(answer and answer.succeeded for answer in answers), left.unmatched))
    # clear (nothing to delete before the first shard), one insert of the lines, one query pairing the requests
    assert [paired for paired, _, _ in found] == [2, 3, 4]  # + the counts of shard 1, read by its leftovers
    assert [(ok, unmatched) for _, ok, unmatched in found] == [(True, 0), (True, 1), (True, 1)]


def _model_match(rows: list[tuple[int, bool]], asked: list[int], *, shared: bool) -> tuple[list, int, int]:
    """What the engine must answer, written naively: ``rows`` are the indexed answers ``(request, ok)`` in
    order (line = position + 1), ``asked`` the requests. Returns the lines given, unmatched and duplicates."""
    given, count = [], {}
    for req in asked:
        count[req] = k = count.get(req, 0) + 1
        successes = [n + 1 for n, (r, ok) in enumerate(rows) if r == req and ok]
        failures = [n + 1 for n, (r, ok) in enumerate(rows) if r == req and not ok]
        if shared or k == 1:
            line = successes[0] if successes else (failures[-1] if failures else None)
        else:
            line = successes[k - 1] if len(successes) >= k else (failures[-1] if failures else None)
        given.append(line)
    unmatched = sum(1 for r, _ in rows if r not in count)
    duplicates = 0
    for req, n in count.items():
        successes = sum(1 for r, ok in rows if r == req and ok)
        duplicates += max(0, successes - (1 if shared else n))
    return given, unmatched, duplicates


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_the_engine_agrees_with_a_naive_model_across_blocks_flushes_and_bloom_false_positives(
    monkeypatch, seed: int, shared: bool
):
    """Identical requests spread over many blocks, the counts written to the seen table in small batches, and
    a Bloom filter of 64 bits (most lookups are false positives): every answer and leftover as the model says;
    ``clear()`` starts over (a digest counted before it is new after it); leftovers asked between two calls
    of ``match()`` change nothing."""
    import airflow_provider_maas.batch.answers.matching as matching

    monkeypatch.setattr(matching, "_MATCH_BLOCK", 3)
    monkeypatch.setattr(matching, "_SEEN_FLUSH", 4)
    monkeypatch.setattr(matching, "_BLOOM_BITS", 64)
    monkeypatch.setattr(matching, "_BLOOM_MASK", 63)
    rng = random.Random(seed)

    def texts(n: int) -> dict[str, Any]:
        return {"contents": [{"role": "user", "parts": [{"text": f"q{n}"}]}]}

    with AnswerStore() as store:
        for _ in range(3):  # three rounds through clear(), as the shard-by-shard merge does
            store.clear()
            rows = [(rng.randrange(12), rng.random() < 0.7) for _ in range(rng.randrange(0, 40))]
            store.add(
                "r",
                io.BytesIO(
                    b"".join(
                        result_line(echo(texts(r)), None if not ok else "a", "" if ok else "INTERNAL") for r, ok in rows
                    )
                ),
            )
            asked = [rng.randrange(14) for _ in range(rng.randrange(1, 40))]
            first = rng.randrange(1, 4)  # a first block alone, its leftovers asked (its counts written), the rest
            matched = list(store.match([texts(n) for n in asked[:first]], request_digest, shared=shared))
            store.leftovers(shared=shared)
            matched += store.match([texts(n) for n in asked[first:]], request_digest, shared=shared)
            left = store.leftovers(shared=shared)
            given, unmatched, duplicates = _model_match(rows, asked, shared=shared)
            assert [answer.line if answer else None for _, answer, _ in matched] == given
            assert [repeated for _, _, repeated in matched] == [n in asked[:i] for i, n in enumerate(asked)]
            assert (left.unmatched, left.duplicates) == (unmatched, duplicates)


def test_answers_are_read_past_the_lineage_wrapper_once_it_recorded_the_file(tmp_path, monkeypatch):
    """Airflow's file wrapper records the file as an input asset on every ``read`` call (8 s of a
    1,000,000-answer merge): the merge reads its answers one by one from the file under it, once the
    indexing pass (through the wrapper) recorded it. The file is still reported; not once per answer."""
    from airflow_provider_maas.batch.answers.merge import merge_results
    from airflow_provider_maas.storage import open_source, to_path
    from airflow_provider_maas.storage.paths import untracked

    recorded = record_input_assets(monkeypatch)
    asked = [request(n) for n in range(5)]
    (tmp_path / "requests.jsonl").write_bytes(b"".join(json.dumps({"request": r}).encode() + b"\n" for r in asked))
    results = tmp_path / "results.jsonl"
    results.write_bytes(b"".join(result_line(echo(r), f"answer {n}") for n, r in enumerate(reversed(asked))))
    with open_source(to_path(f"file://{results}")) as handle:
        assert untracked(handle) is not handle  # this Airflow's wrapper is known (else: slower, still right)
    recorded.clear()
    summary = merge_results([f"file://{results}"], f"file://{tmp_path / 'requests.jsonl'}", tmp_path / "out.jsonl")
    assert summary["succeeded"] == 5
    assert 1 <= sum(uri.endswith("results.jsonl") for uri in recorded) <= 2
    assert untracked(io.BytesIO(b"x")).read() == b"x"  # any other file: itself
