from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from airflow_provider_maas.client.integrity import StreamHasher, b64_crc32c, b64_md5, verify_download, verify_upload
from airflow_provider_maas.exceptions import MaaSIntegrityError

FIXTURES = Path(__file__).parent / "fixtures"
CHECK = b"123456789"
CHECK_CRC32C = base64.b64encode(bytes.fromhex("e3069283")).decode()  # the CRC-32C check value
CHECK_MD5 = base64.b64encode(bytes.fromhex("25f9e794323b453885f5181f1b624d0b")).decode()  # RFC 1321 style vector


def hashed(data: bytes, chunk: int = 3, **flags: bool) -> StreamHasher:
    hasher = StreamHasher(**flags)
    for start in range(0, len(data), chunk):
        hasher.update(data[start : start + chunk])
    return hasher


def test_known_vectors():
    assert b64_crc32c(CHECK) == CHECK_CRC32C == "4waSgw=="
    assert b64_md5(CHECK) == CHECK_MD5
    assert b64_md5(b"") == "1B2M2Y8AsgTpgAmY7PhCfg=="
    assert b64_crc32c(b"") == "AAAAAA=="


@pytest.mark.parametrize("chunk", [1, 2, 4, 100])
def test_stream_hasher_matches_one_shot(chunk: int):
    hasher = hashed(CHECK, chunk)
    assert (hasher.size, hasher.md5_b64(), hasher.crc32c_b64()) == (9, CHECK_MD5, CHECK_CRC32C)
    data = bytes(range(256)) * 40
    hasher = hashed(data, chunk * 97)
    assert hasher.md5_b64() == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert hasher.crc32c_b64() == b64_crc32c(data)


def test_stream_hasher_accepts_memoryview_and_bytearray():
    hasher = StreamHasher()
    hasher.update(memoryview(CHECK)[:4])
    hasher.update(bytearray(CHECK[4:]))
    assert (hasher.size, hasher.md5_b64(), hasher.crc32c_b64()) == (9, CHECK_MD5, CHECK_CRC32C)


def test_stream_hasher_flags():
    only_crc = hashed(CHECK, md5=False)
    assert not only_crc.has_md5 and only_crc.has_crc32c and only_crc.crc32c_b64() == CHECK_CRC32C
    with pytest.raises(ValueError, match="md5=False"):
        only_crc.md5_b64()
    only_md5 = hashed(CHECK, crc32c=False)
    with pytest.raises(ValueError, match="crc32c=False"):
        only_md5.crc32c_b64()
    assert only_md5.md5_b64() == CHECK_MD5


def upload_response(**changes: str | None) -> dict[str, str]:
    response = json.loads((FIXTURES / "upload_response.json").read_text())
    response.update(size="9", md5Hash=CHECK_MD5, crc32c=CHECK_CRC32C)
    for key, value in changes.items():
        if value is None:
            del response[key]
        else:
            response[key] = value
    return response


def test_verify_upload_passes():
    assert verify_upload(upload_response(), hashed(CHECK)) == ("size", "md5Hash", "crc32c")
    # The hook hashes uploads with MD5 only: the CRC32C is then not checked.
    assert verify_upload(upload_response(), hashed(CHECK, crc32c=False)) == ("size", "md5Hash")


def test_verify_upload_against_the_fixture_shape():
    response = json.loads((FIXTURES / "upload_response.json").read_text())
    with pytest.raises(MaaSIntegrityError) as info:
        verify_upload(response, hashed(CHECK, crc32c=False))
    assert str(info.value) == (
        "uploaded file ImageToImage.jsonl: service reports size 510 / md5 pM5qF/A+Eetto7iq5PZMsA==, "
        f"sent size 9 / md5 {CHECK_MD5}; the bytes changed in transit: upload again"
    )


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"size": "10"}, "service reports size 10 / md5"),
        ({"md5Hash": "AAAAAAAAAAAAAAAAAAAAAA=="}, "md5 AAAAAAAAAAAAAAAAAAAAAA=="),
        ({"crc32c": "AAAAAA=="}, "crc32c AAAAAA==, sent size 9"),
        ({"size": "nine"}, "service reports size nine"),
    ],
)
def test_verify_upload_mismatch(changes: dict[str, str], needle: str):
    with pytest.raises(MaaSIntegrityError, match=r"^uploaded file ImageToImage\.jsonl: ") as info:
        verify_upload(upload_response(**changes), hashed(CHECK))
    assert needle in str(info.value)


def test_verify_upload_with_nothing_to_check():
    assert verify_upload(upload_response(md5Hash=None, crc32c=None), hashed(CHECK)) == ("size",)
    with pytest.raises(MaaSIntegrityError, match="no size and no checksum"):
        verify_upload(upload_response(size=None, md5Hash=None, crc32c=None), hashed(CHECK))
    with pytest.raises(MaaSIntegrityError, match="no size and no checksum"):
        verify_upload({}, hashed(CHECK))


def test_verify_download():
    metadata = json.loads((FIXTURES / "results_metadata.json").read_text())
    assert "md5Hash" not in metadata
    metadata.update(size="9", crc32c=CHECK_CRC32C)
    hasher = hashed(CHECK, md5=False)
    assert verify_download(metadata, hasher, what="results of job 7") == ("size", "crc32c")
    assert verify_download({"crc32c": CHECK_CRC32C}, hasher, what="x") == ("crc32c",)
    assert verify_download({"size": "9"}, hasher, what="x") == ("size",)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (
            {"size": "10", "crc32c": CHECK_CRC32C},
            "downloaded results of job 7: service reports size 10 / crc32c 4waSgw==, received size 9 / "
            "crc32c 4waSgw==; the bytes changed in transit: download again",
        ),
        (
            {"size": "9", "crc32c": "40/N2Q=="},
            "downloaded results of job 7: service reports size 9 / crc32c 40/N2Q==, received size 9 / "
            "crc32c 4waSgw==; the bytes changed in transit: download again",
        ),
    ],
)
def test_verify_download_mismatch(metadata: dict[str, str], message: str):
    with pytest.raises(MaaSIntegrityError) as info:
        verify_download(metadata, hashed(CHECK, md5=False), what="results of job 7")
    assert str(info.value) == message


def test_verify_download_never_passes_silently():
    with pytest.raises(MaaSIntegrityError, match="no size and no crc32c"):
        verify_download({"kind": "storage#object"}, hashed(CHECK), what="results of job 7")
    # A crc32c the hasher does not compute cannot be checked either.
    with pytest.raises(MaaSIntegrityError, match="no size and no crc32c"):
        verify_download({"crc32c": CHECK_CRC32C}, hashed(CHECK, crc32c=False), what="results of job 7")
