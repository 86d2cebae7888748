"""The user's manual cannot drift from the code: every snippet of the README and of the docs it points
to is executed here (the two quick-start commands by CI itself and by tests/test_demo.py), and its
checkable claims (operator parameters, the errors table, the compatibility table, the dependency
table, the emulator options, links) are compared with the code."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import shutil
import socket
import subprocess
import sys
from typing import Any

import pytest

from airflow_provider_maas.batch.answers.summary_types import BatchSummary, DownloadSummary, MergeSummary
from airflow_provider_maas.batch.inputs.request_lines import validate_request_line
from tests.conftest import API_KEY, ENDPOINT, ROOT

README = (ROOT / "README.md").read_text()
DOCS = {path.relative_to(ROOT).as_posix(): path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))}
MANUAL = {"README.md": README, **DOCS}
#: Every parameter of the operators, with its default (the README's operator reference links to it).
PARAMETERS = DOCS["docs/operators.md"]
BIN = os.path.dirname(sys.executable)

#: Parameters the README documents ahead of the branches adding them (empty this once they landed).
PENDING_PARAMETERS: set[tuple[str, str]] = set()
#: Parameters of the operators that call the service, documented once for all of them.
COMMON = {"maas_conn_id", "endpoint"}


def _blocks(lang: str, text: str | None = None) -> list[str]:
    texts = [text] if text is not None else list(MANUAL.values())
    return [body for t in texts for kind, body in re.findall(r"```(\w+)\n(.*?)```", t, flags=re.S) if kind == lang]


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line) up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n") + len(heading) + 1
    following = re.compile(rf"^#{{1,{level}}} ", flags=re.M).search(text, start)
    return text[start : following.start() if following else len(text)]


def _table(text: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first Markdown table in ``text``."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rule = next(i for i, line in enumerate(lines) if set(line) <= set("|-: "))
    rows = []
    for line in lines[rule + 1 :]:
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def _compat_tables() -> tuple[list[str], list[list[str]], list[list[str]]]:
    """The Compatibility section: its Airflow versions (newest first), the "tested in CI" and the feature tables."""
    section = _section(README, "## Compatibility")
    tested = section[section.index("| tested in CI |") : section.index("| feature |")]
    features = section[section.index("| feature |") :]
    versions = [cell.strip() for cell in tested.splitlines()[0].split("|")[2:-1]]
    return versions, _table(tested), _table(features)


def _pyproject() -> dict:
    import tomllib  # Python >= 3.11: only the tests that read pyproject.toml need it

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}


def _fill(snippet: str, emulator) -> str:
    return (
        snippet.replace("https://genaiapi.cloudsway.net", emulator.base_url)
        .replace("YOUR-KEY", API_KEY)
        .replace("YOUR-ENDPOINT", ENDPOINT)
    )


# Snippets ---------------------------------------------------------------------------------------


def _bash_kind(body: str) -> str | None:
    kinds = {
        "make demo": "quickstart",  # make test is what CI runs; make demo runs in tests/test_demo.py
        'pip install "apache-airflow==': "install",
        "export AIRFLOW_CONN_MAAS_DEFAULT": "env",
        "airflow connections add": "cli",
        "maas-emulator": "emulator",
        "export AIRFLOW_HOME=": "quickstart-setup",  # docs/quickstart.md: run by tests/test_quickstart.py
        "airflow dags test maas_quickstart": "quickstart-run",
    }
    return next((kind for start, kind in kinds.items() if body.startswith(start)), None)


def _bash(kind: str) -> str:
    (block,) = [b for b in _blocks("bash") if _bash_kind(b) == kind]
    return block


def test_every_snippet_is_covered():
    kinds = sorted({kind for text in MANUAL.values() for kind in re.findall(r"```(\w+)\n", text)})
    assert kinds == ["bash", "json", "python"]
    unhandled = [b for b in _blocks("bash") if not _bash_kind(b)]
    assert not unhandled, f"a new bash snippet needs a test here: {unhandled}"


PYTHON_SNIPPETS = [(name, i) for name, text in MANUAL.items() for i in range(len(_blocks("python", text)))]


@pytest.mark.parametrize(("name", "index"), PYTHON_SNIPPETS, ids=[f"{n}-{i}" for n, i in PYTHON_SNIPPETS])
def test_python_snippet_runs(emulator, name, index, monkeypatch, tmp_path):
    """Run from a folder holding what the snippets read: a results file, as an operator writes it."""
    shutil.copyfile(ROOT / "tests" / "fixtures" / "results_example.jsonl", tmp_path / "results.jsonl")
    monkeypatch.chdir(tmp_path)
    code = _blocks("python", MANUAL[name])[index]
    exec(compile(code, f"{name} python snippet {index}", "exec"), {"__name__": "readme"})


def test_json_snippet_is_a_valid_request():
    for number, line in enumerate(_blocks("json", README)[0].splitlines(), 1):
        validate_request_line(line.encode(), number)


def test_quickstart_names_the_two_commands_and_make_test_sets_itself_up():
    commands = [line.split("#")[0].strip() for line in _bash("quickstart").splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    # nothing has to run before `make test` on a fresh clone: it installs the browser test's parts
    (prerequisites,) = re.findall(r"^test:(.*)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert "browser-deps" in prerequisites.split()


def test_install_snippet_pins_airflow_with_its_constraints_then_installs_the_distribution():
    airflow_line, provider_line = _bash("install").strip().splitlines()
    (version,) = re.findall(r'"apache-airflow==([\d.]+)"', airflow_line)
    assert f"/apache/airflow/constraints-{version}/constraints-3." in airflow_line
    assert provider_line == f"pip install {_pyproject()['project']['name']}"
    assert version == _compat_tables()[0][0]  # the newest version CI runs


def test_env_snippet_gives_a_working_connection(emulator):
    env = _env()
    env.pop("AIRFLOW_CONN_MAAS_DEFAULT", None)
    script = _fill(_bash("env"), emulator) + (
        '\npython -c "from airflow_provider_maas.hooks.maas import MaaSHook; ok, m = MaaSHook().test_connection(); '
        'print(m); assert ok"\n'
    )
    result = subprocess.run(["bash", "-ec", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Connection works" in result.stdout


def test_cli_snippet_adds_and_tests_the_connection(emulator):
    env = _env()
    env.pop("AIRFLOW_CONN_MAAS_DEFAULT", None)
    env.pop("AIRFLOW__CORE__TEST_CONNECTION", None)  # the snippet enables the test itself
    script = "airflow connections delete maas_default >/dev/null 2>&1 || true\n" + _fill(_bash("cli"), emulator)
    result = subprocess.run(["bash", "-ec", script], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Connection success!" in result.stdout + result.stderr
    assert API_KEY not in result.stdout + result.stderr
    subprocess.run(["airflow", "connections", "delete", "maas_default"], env=env, capture_output=True, timeout=120)


def test_emulator_snippet_starts_and_prints_the_connection():
    start, help_line = [line.split("#")[0].strip() for line in _bash("emulator").splitlines()]
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


# Claims -----------------------------------------------------------------------------------------


def _operators() -> list[type]:
    from airflow_provider_maas.operators import maas as operators
    from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor

    return [getattr(operators, name) for name in operators.__all__] + [MaaSBatchJobSensor]


def _own_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword parameters of ``cls`` and of its bases, up to (not including) Airflow's classes."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if klass.__module__.startswith("airflow."):
            break
        if "__init__" in vars(klass):
            for name, param in inspect.signature(klass.__init__).parameters.items():
                if param.kind is param.KEYWORD_ONLY:
                    params.setdefault(name, param)
    return params


@pytest.mark.parametrize("cls", _operators(), ids=lambda cls: cls.__name__)
def test_operator_reference_documents_every_parameter_with_its_default(cls):
    section = _section(PARAMETERS, f"### `{cls.__name__}`")
    params = _own_parameters(cls)
    shown = dict(re.findall(r"`(\w+)(?:=([^`]*))?`", section))
    for name, param in params.items():
        if name in COMMON:
            continue
        assert name in shown, f"docs/operators.md: {cls.__name__} lacks `{name}`"
        default = shown[name]
        if default and not default.startswith("<") and param.default is not param.empty:
            assert default == str(param.default), (
                f"docs/operators.md: {cls.__name__}({name}={default}), code: {param.default!r}"
            )
    # each bullet starts with the parameters it describes: every one of them must exist
    bulleted = {
        name
        for lead in re.findall(r"^- ((?:`[^`]+`(?:, )?)+)", section, flags=re.M)
        for name in re.findall(r"`(\w+)", lead)
    }
    unknown = {n for n in bulleted - set(params) if (cls.__name__, n) not in PENDING_PARAMETERS}
    assert not unknown, f"docs/operators.md documents parameters {cls.__name__} does not have: {unknown}"
    assert f"### `{cls.__name__}`\n" in README  # what it does, returns and pushes


def test_operators_that_call_the_service_take_the_connection_and_endpoint():
    intro = _section(README, "## Operator reference").split("###")[0]
    assert "(all but split and merge) also take" in intro and '`maas_conn_id="maas_default"`' in intro
    for cls in _operators():
        params = _own_parameters(cls)
        calls_service = cls.__name__ not in {"MaaSSplitRequestsOperator", "MaaSMergeResultsOperator"}
        assert (set(params) >= COMMON) == calls_service, cls.__name__
        if calls_service:
            assert params["maas_conn_id"].default == "maas_default"
            assert params["endpoint"].default is None


def test_errors_table_lists_every_error_and_whether_airflow_retries_it():
    from airflow_provider_maas import exceptions
    from airflow_provider_maas._compat import AirflowFailException

    classes = {
        obj.__name__: obj
        for obj in vars(exceptions).values()
        if isinstance(obj, type) and issubclass(obj, exceptions.MaaSError) and obj.__module__ == exceptions.__name__
    }
    rows = {row[0].strip("`"): row[2] for row in _table(_section(README, "## Errors"))}
    assert set(rows) == set(classes), "the README's errors table and exceptions.py differ"
    for name, retried in rows.items():
        expected = "no" if issubclass(classes[name], AirflowFailException) else "yes"
        assert retried == expected, f"README: Airflow retries {name}: {retried}; the code: {expected}"


def test_retry_counts_are_the_codes():
    from airflow_provider_maas.hooks.maas import MaaSHook
    from airflow_provider_maas.triggers.maas import MaaSBatchJobTrigger

    claim = r"(\d+)\s+attempts\s+per\s+call,\s+on\s+a\s+worker\s+and\s+per\s+poll\s+in\s+the\s+triggerer\s+alike"
    quoted = re.findall(claim, _section(README, "## Errors")) + re.findall(claim, DOCS["docs/reliability.md"])
    assert len(quoted) == 2, "the README's Errors section and docs/reliability.md each give the attempts"
    for attempts in quoted:
        assert int(attempts) == inspect.signature(MaaSHook.__init__).parameters["max_attempts"].default
    # The triggers build their hook with its default attempts, like the operators do.
    source = inspect.getsource(importlib.import_module("airflow_provider_maas.triggers.maas"))
    assert "max_attempts" not in source
    (tolerated,) = re.findall(r"triggers tolerate (\d+) consecutive failed polls", DOCS["docs/reliability.md"])
    default = inspect.signature(MaaSBatchJobTrigger.__init__).parameters["max_consecutive_poll_errors"].default
    assert int(tolerated) == default


def test_compatibility_table_names_what_ci_runs():
    import airflow

    versions, tested, _ = _compat_tables()
    makefile = (ROOT / "Makefile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for version, cell in zip(versions, tested[0][1:], strict=True):
        (target,) = re.findall(r"`make ([\w.-]+)`", cell)
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"no make target {target}"
        series = ".".join(version.split(".")[:2])
        if target == "test":
            assert "make test\n" in ci
            assert airflow.__version__.startswith(series + "."), "make test runs another Airflow than the table says"
            continue
        looped = re.findall(r"for series in ([\d. ]+); do", ci) if 'make "test-compat-$series"' in ci else []
        assert f"make {target}\n" in ci or (target == f"test-compat-{series}" and series in looped[0].split())
        constraints = (ROOT / "scripts" / f"constraints-airflow-{series}.txt").read_text()
        assert f"\napache-airflow=={version}\n" in constraints
        assert f"compat.sh $(AF{series.replace('.', '')}_VENV) {series}" in makefile


def test_trigger_on_kill_versions():
    from airflow_provider_maas.triggers.maas import MaaSBatchJobsTrigger, MaaSBatchJobTrigger

    for trigger in (MaaSBatchJobTrigger, MaaSBatchJobsTrigger):
        assert inspect.iscoroutinefunction(trigger.on_kill)
    assert "On Airflow >= 3.3 the triggerer calls" in DOCS["docs/compatibility.md"]
    (row,) = [r for r in _compat_tables()[2] if "on_kill" in r[0]]
    assert [cell.removesuffix(" [code]") for cell in row[1:]] == ["called", "not called", "not called", "not called"]


def test_readme_feature_rows_are_the_compatibility_docs_rows():
    """The README shows a few rows of docs/compatibility.md's table: the same words, never a second version."""
    versions, _, readme_rows = _compat_tables()
    docs = DOCS["docs/compatibility.md"]
    header = [cell.strip() for cell in docs[docs.index("| feature |") :].splitlines()[0].split("|")[2:-1]]
    assert header == [".".join(v.split(".")[:2]) + ".x" for v in versions]
    docs_rows = _table(docs[docs.index("| feature |") :])
    assert readme_rows and all(row in docs_rows for row in readme_rows), "README and docs/compatibility.md differ"


def test_dependency_table_is_pyprojects():
    def name(requirement: str) -> str:
        return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0]

    documented = [name(row[0].strip("`")) for row in _table(DOCS["docs/dependencies.md"])]
    assert sorted(documented) == sorted(name(d) for d in _pyproject()["project"]["dependencies"])


def test_emulator_options_in_the_docs_exist():
    result = subprocess.run(
        [sys.executable, "-m", "airflow_provider_maas.emulator", "--help"], capture_output=True, text=True, check=True
    )
    named = set(re.findall(r"`(--[a-z0-9-]+)", DOCS["docs/emulator.md"]))
    assert named, "docs/emulator.md names no option"
    assert named <= set(re.findall(r"--[a-z0-9-]+", result.stdout))


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_and_anchors_resolve():
    for name, text in MANUAL.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            file = (ROOT / name).parent / path if path else ROOT / name
            assert file.exists(), f"{name}: broken link {target}"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)
                assert anchor in {_slug(h) for h in headings}, f"{name}: no heading for #{anchor} in {file.name}"


def test_repository_files_named_in_the_manual_exist():
    for name, text in MANUAL.items():
        for path in re.findall(r"`((?:example_dags|tests|scripts|benchmarks|\.ci)/[\w./-]+)`", text):
            if "X.Y" not in path:
                assert (ROOT / path).exists(), f"{name} names {path}: it does not exist"


PACKAGE = ROOT / "airflow_provider_maas"


def _module_map() -> str:
    development = _section(README, "## Development")
    intro = "`airflow_provider_maas/`:"
    return development[development.index(intro) + len(intro) :]


def test_module_map_matches_the_tree():
    """Every folder and module the map names exists; every folder and public top-level module is named.
    New modules inside a folder need no change to the map (it describes folders by their role)."""
    named = set(re.findall(r"`((?:\w+/)*\w+(?:\.py|/))`", _module_map()))
    for name in named:
        path = PACKAGE / name
        assert path.is_dir() if name.endswith("/") else path.is_file(), f"README module map: no {name}"
    folders = {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    top_modules = {p.name for p in PACKAGE.glob("*.py") if not p.name.startswith("_")}
    mentioned = named | {n.split("/")[0] + "/" for n in named if "/" in n.rstrip("/")}
    assert folders <= mentioned, f"README module map lacks folders {sorted(folders - mentioned)}"
    assert top_modules <= named, f"README module map lacks modules {sorted(top_modules - named)}"


def _imports(path) -> set[str]:
    """Every module ``path`` imports, at the top, inside functions or under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_lower_layers_never_import_the_airflow_facing_ones():
    (claim,) = re.findall(r"^((?:`\w+/`(?:, | and )?)+) never import ((?:`\w+/`(?:, | or )?)+)\.", README, flags=re.M)
    lower, upper = (re.findall(r"`(\w+)/`", part) for part in claim)
    assert lower and upper
    for folder in lower:
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for module in _imports(path):
                for kind in upper:
                    assert not module.startswith(f"airflow_provider_maas.{kind}"), (
                        f"{path.relative_to(ROOT)} imports {module}"
                    )


def test_public_results_reader_is_the_batch_reader():
    """The README documents ``airflow_provider_maas.results``: it stays the re-export of ``batch/answers/results.py``."""
    from airflow_provider_maas import results
    from airflow_provider_maas.batch.answers import results as implementation

    assert "from airflow_provider_maas.results import iter_results, summarize" in README
    for name in results.__all__:
        assert getattr(results, name) is getattr(implementation, name)


def test_errors_outside_the_hierarchy_are_the_ones_the_readme_names():
    """ "Errors derive from MaaSError, except ...": every public exception class of the package (the
    emulator aside) either is a MaaSError or is named in that sentence, and each named one exists."""
    from airflow_provider_maas.exceptions import MaaSError

    # "Errors derive from `MaaSError` (an `AirflowException`)[, except `X` (a `ValueError`: ...)]."
    (exceptions,) = re.findall(
        r"[Ee]rrors? derives? from `MaaSError` \(an `AirflowException`\)(?:, except ([^.]*))?\.",
        " ".join(_section(README, "## Errors").split()),
    )
    named = set(re.findall(r"`(\w+)` \(a `(\w+)`", exceptions))
    outside = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if "emulator" in path.parts or path.name.startswith("_"):
            continue
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for name, obj in vars(module).items():
            is_error = isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == module.__name__
            if is_error and not name.startswith("_") and not issubclass(obj, MaaSError):
                outside.add((name, obj.__mro__[1].__name__))
    assert named == outside, f"README names {sorted(named)} outside MaaSError; the code: {sorted(outside)}"


def test_templated_parameters():
    """ "Parameters naming a file, path, job or connection are templated": every parameter that takes a
    name or a path (typed ``str`` or ``Any``) is in ``template_fields``; numbers, flags, dicts and
    callables are not templated. An old name (``RENAMED``) is templated as its new name, where its value goes."""
    intro = _section(README, "## Operator reference").split("###")[0]
    assert "Parameters naming a file, path, job or connection are templated" in " ".join(intro.split())
    for cls in _operators():
        for name, param in _own_parameters(cls).items():
            annotation = str(param.annotation)
            takes_text = annotation.startswith("str") or "Any" in annotation
            templated = getattr(cls, "RENAMED", {}).get(name, name) in cls.template_fields
            assert templated == takes_text, f"{cls.__name__}.{name}: {annotation}"


def _listed(text: str, after: str, end: str = ".") -> set[str]:
    """The backticked names in ``text`` between ``after`` and the next ``end``."""
    start = text.index(after) + len(after)
    return set(re.findall(r"`(\w+)`", text[start : text.index(end, start)]))


#: The operators that push an XCom ``summary``, and its type (``batch/answers/summary_types.py``).
SUMMARY_TYPES = {
    "MaaSDownloadResultsOperator": DownloadSummary,
    "MaaSMergeResultsOperator": MergeSummary,
    "MaaSBatchPredictionOperator": BatchSummary,
}


def _keys(summary_type: Any) -> set[str]:
    """Every key of a summary type, optional ones included."""
    return set(summary_type.__required_keys__ | summary_type.__optional_keys__)


def _summary_common() -> set[str]:
    """The keys the README lists for every summary ("push an XCom `summary` (...)")."""
    return _listed(" ".join(_section(README, "## Operator reference").split()), "push an XCom `summary` (", ")")


def _summary_documented(operator: str) -> set[str]:
    """The summary keys the README lists for ``operator``: the common ones and those its section adds
    ("The `summary` adds ..."), without the parameters named as conditions (`images` with
    `extract_images`) that are no key of its summary."""
    from airflow_provider_maas.operators import maas as operators

    added = _listed(" ".join(_section(README, f"### `{operator}`").split()), "The `summary` adds ")
    conditions = set(_own_parameters(getattr(operators, operator))) - _keys(SUMMARY_TYPES[operator])
    return _summary_common() | (added - conditions)


def test_summary_keys_are_what_the_operators_push(emulator, tmp_path):
    """Every key the README lists for an operator is pushed (those its summary type holds only in some
    cases, such as ``images``, when the case applies), and every key pushed is listed."""
    from airflow_provider_maas.hooks.maas import MaaSHook
    from airflow_provider_maas.operators.maas import MaaSDownloadResultsOperator, MaaSMergeResultsOperator
    from tests.helpers import batch_operator, make_context, write_requests

    requests = write_requests(tmp_path / "requests.jsonl", 3)
    hook = MaaSHook()
    job = hook.create_batch_job(hook.upload_file(str(requests), "readme-summary.jsonl")["name"], "readme")
    hook.wait_for_batch_job(job["name"], poll_interval=0.05, timeout=60)

    download = make_context()
    MaaSDownloadResultsOperator(
        task_id="d", job_name=job["name"], destination=str(tmp_path / "d.jsonl"), extract_images=True
    ).execute(download)
    merge = make_context()
    MaaSMergeResultsOperator(
        task_id="m", results=[str(tmp_path / "d.jsonl")], source=str(requests), destination=str(tmp_path / "m.jsonl")
    ).execute(merge)
    batch = make_context()
    batch_operator(requests, tmp_path / "b.jsonl").execute(batch)
    for name, context in (
        ("MaaSDownloadResultsOperator", download),
        ("MaaSMergeResultsOperator", merge),
        ("MaaSBatchPredictionOperator", batch),
    ):
        documented, optional = _summary_documented(name), SUMMARY_TYPES[name].__optional_keys__
        pushed = set(context["ti"].xcom["summary"])
        assert documented - optional <= pushed, f"{name}: documented, not pushed: {sorted(documented - pushed)}"
        assert pushed <= documented, f"{name}: pushed, not documented: {sorted(pushed - documented)}"
    assert "images" in download["ti"].xcom["summary"]  # extract_images=True


def test_connection_facts_are_the_codes():
    from airflow_provider_maas.client.config import DEFAULT_TIMEOUT, parse_verify
    from airflow_provider_maas.hooks.connection import CONN_FIELDS, DEFAULT_BASE_URL
    from airflow_provider_maas.hooks.probe import PROBE_FILE_NAME

    rows = {row[0]: row[1] for row in _table(_section(README, "## Connection"))}
    assert rows["Base URL (`host`)"] == f"`{DEFAULT_BASE_URL}` when empty"
    assert f"(default {DEFAULT_TIMEOUT:g})" in rows["Timeout (`extra.timeout`)"]
    verify = rows["Verify TLS (`extra.verify`)"]
    assert verify.startswith("a checkbox, `true` by default") and "CA bundle path" in verify
    assert "boolean" in CONN_FIELDS["verify"]["schema"]["type"] and CONN_FIELDS["verify"]["schema"]["default"] is True
    ca_bundle = str(ROOT / "tests" / "fixtures" / "requests_example.jsonl")  # any existing file
    assert parse_verify(ca_bundle, conn_id="c") == ca_bundle
    assert f"`{PROBE_FILE_NAME}`" in _section(README, "## Connection")


def test_names_and_extras_are_the_codes():
    from airflow_provider_maas.client.naming import display_name, upload_name
    from airflow_provider_maas.hooks.maas import MaaSHook
    from tests.helpers import make_context

    assert f"A connection of type `{MaaSHook.conn_type}` (**{MaaSHook.hook_name}** in the UI)" in README
    extras = _pyproject()["project"]["optional-dependencies"]
    for extra in re.findall(r"`airflow-provider-maas\[(\w+)\]`", _section(README, "## Install")):
        assert extra in extras, extra
    upload = _section(PARAMETERS, "### `MaaSUploadFileOperator`")
    assert "`<dag>.<task>.<run id>.m<map index>.<content hash>.jsonl`" in upload
    assert upload_name(make_context(dag_id="d", task_id="t", run_id="r", map_index=2), "ab" * 32) == (
        f"d.t.r.m2.{'ab' * 8}.jsonl"
    )
    create = _section(PARAMETERS, "### `MaaSCreateBatchJobOperator`")
    assert "default `<dag>/<task>/<run id>` (`[<map index>]` when mapped)" in create
    assert display_name(make_context(dag_id="d", task_id="t", run_id="r")) == "d/t/r"
    assert display_name(make_context(dag_id="d", task_id="t", run_id="r", map_index=2)) == "d/t/r[2]"


def test_make_targets_named_in_the_readme_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"`make ([\w.-]+)`", README)) | set(re.findall(r"^make ([\w.-]+)", README, flags=re.M))
    assert targets >= {"demo", "test", "test-unit", "lint", "bench"}
    for target in targets:
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"README names make {target}: no such target"


def test_limits_are_the_codes():
    from airflow_provider_maas.batch.inputs.request_lines import MAX_BYTES_PER_FILE, MAX_REQUESTS_PER_FILE
    from airflow_provider_maas.batch.polling import DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS

    limits = _section(README, "## Limits of the service")
    assert f"At most {MAX_REQUESTS_PER_FILE} requests and 50 MB (read as 50 MiB)" in limits
    assert MAX_BYTES_PER_FILE == 50 * 1024 * 1024
    # One default of the wait policy's error budget, for the sensor and (by reference) the batch operator.
    sensor = _section(PARAMETERS, "### `MaaSBatchJobSensor`")
    assert f"`max_consecutive_poll_errors={DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS}`" in sensor
    batch = _section(PARAMETERS, "### `MaaSBatchPredictionOperator`")
    assert f"`max_consecutive_poll_errors={DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS}`: as for the sensor" in batch


def test_default_retry_failures_are_the_documented_ones():
    from airflow_provider_maas.batch.answers.pay_once import retry_predicate

    retried = retry_predicate(None)
    reliability = " ".join(DOCS["docs/reliability.md"].split())
    listed = reliability[reliability.index("the default retries") : reliability.index("Missing results are always")]
    statuses = re.findall(r"`(\w+)`", listed.split("not client errors")[0])
    phrases = re.findall(r'"([^"]+)"', listed.split("not client errors")[0])
    assert statuses and phrases
    for status in [*statuses, *phrases, "429 Too Many Requests", '{"code": 503}']:
        assert retried(status), status
    for status in ["400 INVALID_ARGUMENT: bad request", "403 PERMISSION_DENIED", "SAFETY: blocked"]:
        assert not retried(status), status


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w.])\d[\d,]*(?:\.\d+)?", text))


def test_performance_figures_are_the_benchmarks():
    """Every number in docs/performance.md's table is one that benchmarks/README.md reports."""
    bench = _numbers((ROOT / "benchmarks" / "README.md").read_text())
    for row in _table(DOCS["docs/performance.md"]):
        for cell in row[1:]:
            assert _numbers(cell) <= bench, f"docs/performance.md quotes {_numbers(cell) - bench} not in benchmarks"


def test_triggerer_figures_in_the_deploying_guide_are_the_benchmarks():
    bench = _numbers((ROOT / "benchmarks" / "README.md").read_text())
    section = _section(DOCS["docs/deploying.md"], "## The triggerer: how many waits one process holds")
    (bullets,) = [block for block in section.split("\n\n") if block.startswith("- ")]
    assert "5,000 triggers" in bullets
    assert _numbers(bullets) <= bench, f"docs/deploying.md quotes {_numbers(bullets) - bench} not in benchmarks"


#: The README's size limit: the user's manual stays short, evidence lives in docs/ (issue 13 halved
#: its 26 KB). Set with about 1 KB of room (issue 21: 13 bytes of headroom failed every branch that
#: fixed a sentence); when a change reaches it, move detail to docs/ rather than raise it again.
README_MAX_BYTES = 18_000


def test_readme_stays_a_manual():
    """The README is the user's manual; evidence lives in docs/."""
    size = len(README.encode())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes, over {README_MAX_BYTES}: move detail to docs/"
