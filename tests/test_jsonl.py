from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
from pathlib import Path

import pytest

from airflow_provider_maas._compat import AirflowFailException
from airflow_provider_maas.batch.answers.results import normalise_request, request_key
from airflow_provider_maas.batch.inputs.request_lines import (
    MAX_BYTES_PER_FILE,
    MAX_REQUESTS_PER_FILE,
    iter_request_lines,
    validate_request_line,
)
from airflow_provider_maas.batch.inputs.shards import (
    FileStats,
    copy_shard,
    iter_shards,
    plan_shards,
    shard_name,
    validate_file,
)
from airflow_provider_maas.exceptions import MaaSInputChangedError, MaaSInputError
from tests.helpers import ShortReads

FIXTURES = Path(__file__).parent / "fixtures"


def request_line(i: int, pad: int = 0) -> bytes:
    body = {"request": {"contents": [{"role": "user", "parts": [{"text": f"question {i} " + "x" * pad}]}]}}
    return json.dumps(body).encode() + b"\n"


def make_file(n: int, pad: int = 0) -> bytes:
    return b"".join(request_line(i, pad) for i in range(n))


def error_of(data: bytes, **kwargs: int) -> MaaSInputError:
    with pytest.raises(MaaSInputError) as info:
        validate_file(io.BytesIO(data), **kwargs)
    return info.value


def test_limits_are_the_vendors():
    assert MAX_REQUESTS_PER_FILE == 100
    assert MAX_BYTES_PER_FILE == 50 * 1024 * 1024


def test_validate_file_on_fixture():
    data = (FIXTURES / "requests_example.jsonl").read_bytes()
    stats = validate_file(io.BytesIO(data))
    assert stats == FileStats(requests=2, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), clean=True)


def test_validate_request_line_returns_parsed_line():
    line = request_line(7)
    assert validate_request_line(line, 3) == json.loads(line)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"request": {"contents": [1]', "line 4: not valid JSON: Expecting ',' delimiter"),
        (b"[1, 2]", "line 4: is a JSON list, not an object"),
        (b'{"contents": [{"parts": []}]}', 'line 4: missing "request"; each line must be'),
        (b'{"request": "hello"}', 'line 4: "request" must be a JSON object'),
        (b'{"request": {"generationConfig": {}}}', 'line 4: "request.contents" must be a non-empty list'),
        (b'{"request": {"contents": []}}', 'line 4: "request.contents" must be a non-empty list'),
        (b'{"request": {"contents": {"a": 1}}}', 'line 4: "request.contents" must be a non-empty list'),
        (
            b'{"request": {"contents": ["hi"]}}',
            'line 4: "request.contents[0]" is a JSON string; each content must be an object like '
            '{"role": "user", "parts": [{"text": "..."}]}',
        ),
        (b'{"request": {"contents": [{"role": "user"}]}}', 'line 4: "request.contents[0]" has no "parts"; each'),
        (
            b'{"request": {"contents": [{"parts": [{"text": "a"}]}, {"parts": {"text": "b"}}]}}',
            'line 4: "request.contents[1]" "parts" must be a non-empty list; each content must be an object like',
        ),
        (b'{"request": {"contents": [{"parts": []}]}}', 'line 4: "request.contents[0]" "parts" must be a non-empty'),
        (b'{"request": {"contents": [{"parts": null}]}}', 'line 4: "request.contents[0]" has no "parts"'),
        (
            b'{"request": {"contents": [{"parts": [{"text": "a"}, "b"]}]}}',
            'line 4: "request.contents[0].parts[1]" is a JSON string; each part must be an object like '
            '{"text": "..."} or {"file_data": {"file_uri": "gs://...", "mime_type": "image/jpeg"}}',
        ),
        (
            b'{"request": {"contents": [{"parts": [[{"text": "a"}]]}]}}',
            'line 4: "request.contents[0].parts[0]" is a JSON array',
        ),
        (
            b'{"request": {"contents": ["\xff"]}}',
            "line 4: not valid UTF-8 (byte 0xff at offset 27 of the line); save the file as UTF-8",
        ),
        (b'\xef\xbb\xbf{"request": {"contents": [1]}}', "line 4: starts with a UTF-8 byte order mark (BOM)"),
    ],
)
def test_bad_lines_name_the_line_and_the_fix(line: bytes, expected: str):
    with pytest.raises(MaaSInputError) as info:
        validate_request_line(line, 4)
    assert str(info.value).startswith(expected)
    assert info.value.line_number == 4
    # The same error comes out of a whole file, at the right line (blank lines count).
    data = request_line(0) + b"\n" + request_line(1) + line + b"\n" + request_line(2)
    assert str(error_of(data)).startswith(expected)
    assert error_of(data).line_number == 4
    with pytest.raises(MaaSInputError, match=r"^line 4: "):
        plan_shards(io.BytesIO(data))
    with pytest.raises(MaaSInputError, match=r"^line 4: "):
        list(iter_request_lines(io.BytesIO(data)))


@pytest.mark.parametrize(
    "request_",
    [
        json.loads((FIXTURES / "requests_example.jsonl").read_text().splitlines()[0])["request"],
        {"contents": [{"parts": [{"text": "no role"}]}]},
        {
            "contents": [
                {"role": "user", "parts": [{"text": "2 + 2?"}]},
                {"role": "model", "parts": [{"text": "4"}]},
                {"role": "user", "parts": [{"inline_data": {"mime_type": "image/png", "data": "iVBORw0KGgo="}}]},
            ],
            "systemInstruction": {"parts": [{"text": "be brief"}]},
            "generationConfig": {"temperature": 0.4, "responseModalities": ["TEXT", "IMAGE"]},
        },
        {
            "contents": [
                {"role": "user", "parts": [{"text": "x", "thought": False}, {"fileData": {"fileUri": "gs://b/o"}}]}
            ]
        },
    ],
)
def test_documented_shapes_are_accepted(request_):
    line = json.dumps({"request": request_}).encode()
    assert validate_request_line(line, 1)["request"] == request_
    assert validate_file(io.BytesIO(line + b"\n")).requests == 1  # the fast path agrees


def test_every_message_says_what_to_do():
    assert 'each line must be a JSON object like {"request": {"contents": [...]}}' in str(error_of(b"{\n"))
    assert "save the file as UTF-8" in str(error_of(b"\xff\n"))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "it is empty"),
        (b"\n", "1 line, all blank"),
        (b"  \n\t\n\r\n", "3 lines, all blank"),
        (b"   ", "1 line, all blank"),
    ],
)
def test_empty_file(data: bytes, why: str):
    assert f"the file contains no requests ({why})" in str(error_of(data))
    with pytest.raises(MaaSInputError, match="contains no requests"):
        plan_shards(io.BytesIO(data))


def test_101_requests_is_refused_and_reading_stops():
    data = make_file(101) + b"this line is never parsed\n"
    message = str(error_of(data))
    assert "more than 100 requests (request 101 is on line 101)" in message
    assert "one upload holds at most 100: split it with MaaSSplitRequestsOperator" in message
    assert validate_file(io.BytesIO(make_file(100))).requests == 100


def test_byte_limit_exact_is_accepted_and_one_more_refused():
    data = make_file(3, pad=50)
    assert validate_file(io.BytesIO(data), max_bytes=len(data)).bytes == len(data)
    message = str(error_of(data, max_bytes=len(data) - 1))
    assert f"over the limit of {len(data) - 1} bytes per upload" in message
    assert f"its first 3 requests (up to line 3) already take {len(data)} bytes" in message
    assert "split it with MaaSSplitRequestsOperator" in message


def test_big_limit_is_shown_in_mib():
    data = make_file(3, pad=1024 * 1024)
    with pytest.raises(MaaSInputError, match=r"over the limit of 2097152 bytes \(2\.0 MiB\) per upload"):
        validate_file(io.BytesIO(data), max_bytes=2 * 1024 * 1024)


def test_single_line_over_the_limit():
    small = request_line(0)
    big = request_line(1, pad=500)
    data = small + big + small
    with pytest.raises(
        MaaSInputError, match=r"^line 2: is at least \d+ bytes with its newline, over the limit of 300 bytes"
    ) as info:
        plan_shards(io.BytesIO(data), max_bytes=300)
    assert info.value.line_number == 2
    # A line exactly at the limit (newline included) is fine.
    assert plan_shards(io.BytesIO(big), max_bytes=len(big))[0].bytes == len(big)
    with pytest.raises(MaaSInputError, match=r"^line 1: is at least"):
        plan_shards(io.BytesIO(big), max_bytes=len(big) - 1)


def test_huge_line_is_refused_without_reading_it_all():
    class Endless(io.RawIOBase):
        reads = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            self.reads += 1
            buffer[:] = b"x" * len(buffer)
            return len(buffer)

    source = Endless()
    with pytest.raises(MaaSInputError, match=r"^line 1: is at least"):
        plan_shards(io.BufferedReader(source, 1 << 20), max_bytes=20 * 1024 * 1024)
    assert source.reads < 40


def test_text_mode_file_is_refused():
    with pytest.raises(MaaSInputError, match="binary mode"):
        validate_file(io.StringIO('{"request": {"contents": [{"parts": [{"text": "hi"}]}]}}\n'))  # type: ignore[arg-type]


def test_iter_request_lines_raw_and_blank_lines():
    data = b"\n" + request_line(0) + b"   \n" + request_line(1).rstrip(b"\n")
    lines = list(iter_request_lines(io.BytesIO(data)))
    assert [line.line_number for line in lines] == [2, 4]
    assert [line.raw for line in lines] == [request_line(0), request_line(1)]
    assert lines[0].request == json.loads(request_line(0))["request"]


def test_dirty_file_stats_describe_the_upload_bytes():
    clean = make_file(3)
    dirty = b"\n" + request_line(0) + b"\n\n" + request_line(1) + request_line(2).rstrip(b"\n")
    stats = validate_file(io.BytesIO(dirty))
    assert stats == FileStats(3, len(clean), hashlib.sha256(clean).hexdigest(), clean=False)
    assert validate_file(io.BytesIO(clean)).clean
    assert not validate_file(io.BytesIO(clean + b"\n")).clean


def split(data: bytes, **kwargs: int) -> list[bytes]:
    source = io.BytesIO(data)
    out = []
    for plan in plan_shards(source, **kwargs):
        buffer = io.BytesIO()
        assert copy_shard(source, plan, buffer) == plan.bytes
        assert hashlib.sha256(buffer.getvalue()).hexdigest() == plan.sha256
        assert buffer.getvalue().count(b"\n") == plan.requests
        out.append(buffer.getvalue())
    return out


@pytest.mark.parametrize(("n", "sizes"), [(1, [1]), (100, [100]), (101, [100, 1]), (250, [100, 100, 50])])
def test_split_by_count(n: int, sizes: list[int]):
    data = make_file(n)
    shards = split(data)
    assert [s.count(b"\n") for s in shards] == sizes
    assert b"".join(shards) == data
    plans = plan_shards(io.BytesIO(data))
    assert [(p.index, p.first_line, p.last_line) for p in plans] == [
        (i, 1 + 100 * i, 100 * i + size) for i, size in enumerate(sizes)
    ]
    assert all(p.clean for p in plans)
    assert plans[-1].end_offset == len(data)


def test_split_by_bytes_and_count():
    lines = [request_line(i, pad=(i * 37) % 200) for i in range(60)]
    data = b"".join(lines)
    shards = split(data, max_requests=7, max_bytes=1000)
    assert b"".join(shards) == data
    assert all(len(s) <= 1000 and s.count(b"\n") <= 7 for s in shards)
    # Greedy: each shard is closed only when the next line would not fit.
    for shard, following in itertools.pairwise(shards):
        first_next = following.split(b"\n", 1)[0] + b"\n"
        assert shard.count(b"\n") == 7 or len(shard) + len(first_next) > 1000


def test_split_normalises_blank_lines_and_missing_final_newline():
    lines = [request_line(i) for i in range(5)]
    data = b"\n \n" + lines[0] + b"\n" + lines[1] + b"\t\n" + lines[2] + lines[3] + lines[4].rstrip(b"\n")
    shards = split(data, max_requests=2)
    assert shards == [lines[0] + lines[1], lines[2] + lines[3], lines[4]]
    plans = plan_shards(io.BytesIO(data), max_requests=2)
    assert [p.clean for p in plans] == [False, True, False]  # blank inside / fine / no final newline
    assert [(p.first_line, p.last_line) for p in plans] == [(3, 5), (7, 8), (9, 9)]


def test_plan_is_deterministic():
    data = make_file(333, pad=20)
    assert plan_shards(io.BytesIO(data), max_bytes=9000) == plan_shards(io.BytesIO(data), max_bytes=9000)


def test_short_reads_give_the_same_plan():
    data = make_file(40, pad=30) + b"\n" + make_file(5)
    expected = plan_shards(io.BytesIO(data), max_requests=9)
    assert plan_shards(ShortReads(data, most=7), max_requests=9) == expected
    assert b"".join(split(data, max_requests=9)) == make_file(40, pad=30) + make_file(5)


def test_iter_shards_validates_everything_first():
    data = make_file(150) + b"oops\n"
    shards = iter_shards(io.BytesIO(data))
    with pytest.raises(MaaSInputError, match=r"^line 151: not valid JSON"):
        next(shards)
    good = list(iter_shards(io.BytesIO(make_file(150))))
    assert [s.plan.requests for s in good] == [100, 50]
    assert b"".join(s.data for s in good) == make_file(150)


def test_copy_shard_notices_a_changed_input():
    data = make_file(3)
    plan = plan_shards(io.BytesIO(data))[0]
    with pytest.raises(MaaSInputChangedError, match="changed since it was planned"):
        copy_shard(io.BytesIO(data[:-10]), plan, io.BytesIO())


@pytest.mark.parametrize("clean", [True, False])
def test_copy_shard_refuses_a_same_size_replacement_naming_the_file(clean):
    gap = b"" if clean else b"\n"  # a blank line inside: copied line by line
    data = request_line(0) + gap + request_line(1) + request_line(2)
    plan = plan_shards(io.BytesIO(data))[0]
    assert plan.clean is clean
    changed = data.replace(b"question 1", b"qvestion 1")
    assert len(changed) == len(data) and changed != data
    with pytest.raises(MaaSInputChangedError) as info:
        copy_shard(io.BytesIO(changed), plan, io.BytesIO(), label="source file:///in.jsonl")
    message = str(info.value)
    assert message.startswith("source file:///in.jsonl changed since it was planned: shard 0 (lines 1-")
    assert plan.sha256[:16] in message and "Restore the file" in message and "clear" in message
    assert isinstance(info.value, AirflowFailException)  # not retried: a retry reads the same file


def test_shard_name():
    assert shard_name("part", 0, 3) == "part-00000.jsonl"
    assert shard_name("run/part", 12, 100) == "run/part-00012.jsonl"
    assert shard_name("part", 123456, 200000) == "part-123456.jsonl"
    with pytest.raises(ValueError):
        shard_name("part", 3, 3)


def test_request_key_matches_the_services_echo():
    inputs = [json.loads(line)["request"] for line in (FIXTURES / "requests_example.jsonl").read_bytes().splitlines()]
    echoes = [json.loads(line)["request"] for line in (FIXTURES / "results_example.jsonl").read_bytes().splitlines()]
    assert inputs != echoes  # the echo has null fields added
    assert [normalise_request(r) for r in inputs] == [normalise_request(r) for r in echoes]
    assert [request_key(r) for r in inputs] == [request_key(r) for r in echoes]
    assert request_key(inputs[0]) != request_key(inputs[1])


def test_normalise_request():
    assert normalise_request({"b": None, "a": [None, {"x": None, "y": 1.0}], "c": 0.5}) == {
        "a": [None, {"y": 1}],
        "c": 0.5,
    }
    assert request_key({"a": 1, "b": {"c": "é"}}) == request_key({"b": {"c": "é", "d": None}, "a": 1.0})
    assert request_key({"a": 1}) != request_key({"a": "1"})


def test_shard_names_are_part_numbered_as_documented():
    from airflow_provider_maas.batch.inputs.shards import SHARD_PREFIX

    assert [shard_name(SHARD_PREFIX, i, 3) for i in range(3)] == [
        "part-00000.jsonl",
        "part-00001.jsonl",
        "part-00002.jsonl",
    ]
    for bad in ("", "run/"):
        with pytest.raises(ValueError, match="must name the file"):
            shard_name(bad, 0, 1)


# Strict JSON: what Python's json accepts but the service may reject ------------------------------

_OK = b'{"request": {"contents": [{"role": "user", "parts": [{"text": "ok"}]}]}}\n'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"request": {"contents": [{"parts": [{"text": "a"}]}], "generationConfig": {"temperature": NaN}}}', "NaN"),
        (b'{"request": {"contents": [{"parts": [{"text": "a"}]}], "x": Infinity}}', "Infinity"),
        (b'{"request": {"contents": [{"parts": [{"text": "a"}]}], "x": [-Infinity]}}', "-Infinity"),
        (
            b'{"request": {"contents": [{"parts": [{"text": "a"}]}]}, "request": {"contents": [1]}}',
            "'request' appears twice",
        ),
        (b'{"request": {"contents": [{"parts": [{"text": "a", "text": "b"}]}]}}', "'text' appears twice"),
        (b'{"request": {"contents": [{"parts": [{"text": "a \\ud800 b"}]}]}}', "lone UTF-16 surrogate"),
        (b'{"request": {"contents": [{"parts": [{"text": "\\udc00"}]}]}}', "lone UTF-16 surrogate"),
        (b'{"request": {"contents": [{"parts": [{"text": "\\ude00\\ud83d"}]}]}}', "lone UTF-16 surrogate"),
        (b'{"request": {"contents": [{"parts": [{"text": "a"}]}], "stop": [["\\ud800"]]}}', "lone UTF-16 surrogate"),
        (b'{"request": {"contents": [{"parts": [{"text": "a"}]}], "\\udbff": 1}}', "lone UTF-16 surrogate"),
    ],
)
def test_strict_json_is_refused_naming_the_line(line: bytes, message: str):
    content = _OK + _OK + line + b"\n"
    for check in (validate_file, plan_shards):
        with pytest.raises(MaaSInputError, match=re.escape(message)) as err:
            check(io.BytesIO(content))
        assert str(err.value).startswith("line 3:")
        assert err.value.line_number == 3
    with pytest.raises(MaaSInputError, match=re.escape(message)):
        list(iter_request_lines(io.BytesIO(content)))


@pytest.mark.parametrize(
    "line",
    [
        b'{"request": {"contents": [{"parts": [{"text": "emoji \\ud83d\\ude00 and \\u00e9"}]}]}}',
        '{"request": {"contents": [{"parts": [{"text": "emoji \U0001f600 \u00e9 \u4e2d\u6587"}]}]}}'.encode(),
        b'{"request": {"contents": [{"parts": [{"text": "NaN Infinity \\"text\\": 1"}]}], "x": 1e308}}',
        b'{"request": {"contents": [{"parts": [{"text": "a"}]}, {"parts": [{"text": "a"}]}]}}',
    ],
)
def test_strict_json_keeps_what_is_valid(line: bytes):
    assert validate_file(io.BytesIO(line + b"\n")).requests == 1


def test_upload_of_strict_json_violation_sends_nothing(emulator, tmp_path):
    from airflow_provider_maas.operators.maas import MaaSUploadFileOperator
    from tests.helpers import make_context

    source = tmp_path / "bad.jsonl"
    source.write_bytes(_OK + b'{"request": {"contents": [{"parts": [{"text": "a"}]}], "t": NaN}}\n')
    with pytest.raises(MaaSInputError, match="line 2: NaN is not valid JSON"):
        MaaSUploadFileOperator(task_id="upload", source=str(source)).execute(make_context())
    assert emulator.emulator.access_log == []
