"""Trial of request-line validation messages: each says what to change in the file."""

from __future__ import annotations

import pytest


def test_a_number_too_long_to_parse_is_explained_without_python_advice():
    from airflow_provider_maas.batch.inputs.request_lines import validate_request_line
    from airflow_provider_maas.exceptions import MaaSInputError

    line = (
        b'{"request": {"contents": [{"parts": [{"text": "a"}]}], "generationConfig": {"seed": ' + b"9" * 5000 + b"}}}"
    )
    with pytest.raises(MaaSInputError) as info:
        validate_request_line(line, 7)
    message = str(info.value)
    assert message.startswith("line 7: holds a number with more digits than any field can take; write it as a string")
    assert "set_int_max_str_digits" not in message
