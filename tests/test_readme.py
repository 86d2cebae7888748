"""Every snippet of the README is executed here (or, for the two quick-start commands, by CI itself
and by tests/test_demo.py), so the user's manual cannot drift from the code."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from airflow_provider_maas.jsonl import validate_request_line
from tests.conftest import API_KEY, ENDPOINT, ROOT

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
BIN = os.path.dirname(sys.executable)


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCKS if kind == lang]


def _env(emulator) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
    }


def _fill(snippet: str, emulator) -> str:
    return (
        snippet.replace("https://genaiapi.cloudsway.net", emulator.base_url)
        .replace("YOUR-KEY", API_KEY)
        .replace("YOUR-ENDPOINT", ENDPOINT)
    )


def test_every_snippet_is_covered():
    kinds = sorted({kind for kind, _ in BLOCKS})
    assert kinds == ["bash", "json", "python"]
    handled = [b for b in _blocks("bash") if _bash_kind(b)]
    assert handled == _blocks("bash"), "a new bash snippet needs a test here"


def _bash_kind(body: str) -> str | None:
    if body.startswith("make demo"):
        return "quickstart"  # make test is what CI runs; make demo runs in tests/test_demo.py
    if body.startswith("pip install airflow-provider-maas"):
        return "pip"
    if body.startswith("export AIRFLOW_CONN_MAAS_DEFAULT"):
        return "env"
    if body.startswith("airflow connections add"):
        return "cli"
    if body.startswith("maas-emulator"):
        return "emulator"
    return None


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_snippet_runs(emulator, index, monkeypatch):
    monkeypatch.chdir(ROOT)
    exec(compile(_blocks("python")[index], f"README.md python snippet {index}", "exec"), {"__name__": "readme"})


def test_json_snippet_is_a_valid_request():
    for number, line in enumerate(_blocks("json")[0].splitlines(), 1):
        validate_request_line(line.encode(), number)


def test_quickstart_names_the_two_commands():
    (block,) = [b for b in _blocks("bash") if _bash_kind(b) == "quickstart"]
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_pip_snippet_names_the_distribution():
    (block,) = [b for b in _blocks("bash") if _bash_kind(b) == "pip"]
    import tomllib

    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert block.strip() == f"pip install {name}"


def test_env_snippet_gives_a_working_connection(emulator):
    (block,) = [b for b in _blocks("bash") if _bash_kind(b) == "env"]
    env = _env(emulator)
    env.pop("AIRFLOW_CONN_MAAS_DEFAULT", None)
    script = _fill(block, emulator) + (
        '\npython -c "from airflow_provider_maas.hooks.maas import MaaSHook; ok, m = MaaSHook().test_connection(); '
        'print(m); assert ok"\n'
    )
    result = subprocess.run(["bash", "-ec", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Connection works" in result.stdout


def test_cli_snippet_adds_and_tests_the_connection(emulator):
    (block,) = [b for b in _blocks("bash") if _bash_kind(b) == "cli"]
    env = _env(emulator)
    env.pop("AIRFLOW_CONN_MAAS_DEFAULT", None)
    script = "airflow connections delete maas_default >/dev/null 2>&1 || true\n" + _fill(block, emulator)
    result = subprocess.run(["bash", "-ec", script], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Connection success!" in result.stdout + result.stderr
    assert API_KEY not in result.stdout + result.stderr
    subprocess.run(["airflow", "connections", "delete", "maas_default"], env=env, capture_output=True, timeout=120)


def test_emulator_snippet_starts_and_prints_the_connection():
    (block,) = [b for b in _blocks("bash") if _bash_kind(b) == "emulator"]
    start, help_line = [line.split("#")[0].strip() for line in block.splitlines()]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = shutil.which("maas-emulator", path=BIN) or f"{sys.executable} -m airflow_provider_maas.emulator"
    command = start.replace("maas-emulator", exe).replace("8089", str(port))
    proc = subprocess.Popen(command.split(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = ""
        for line in proc.stdout:
            seen += line
            if "AIRFLOW_CONN_MAAS_DEFAULT" in line:
                break
        assert f"127.0.0.1:{port}" in seen
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    result = subprocess.run(help_line.replace("python", sys.executable, 1).split(), capture_output=True, text=True)
    assert result.returncode == 0
    assert "--job-duration" in result.stdout
