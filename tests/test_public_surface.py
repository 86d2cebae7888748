"""The names DAG code may import (issue 21): listed once here, importable, documented, and the only
ones the example DAGs and the manual's snippets use. A name added to a public module's ``__all__``,
or imported by an example from anywhere else, fails here until this list (and the manual) say so."""

from __future__ import annotations

import ast
import importlib
import re

import pytest

from tests.conftest import ROOT

#: Module -> the names DAG code may import from it.
PUBLIC = {
    "airflow_provider_maas.operators.maas": {
        "MaaSBatchPredictionOperator",
        "MaaSCreateBatchJobOperator",
        "MaaSDownloadResultsOperator",
        "MaaSMergeResultsOperator",
        "MaaSSplitRequestsOperator",
        "MaaSUploadFileOperator",
    },
    "airflow_provider_maas.sensors.maas": {"MaaSBatchJobSensor"},
    "airflow_provider_maas.hooks.maas": {"MaaSHook", "MaaSJobCreationUncertainError"},
    "airflow_provider_maas.exceptions": {
        "MaaSApiError",
        "MaaSAuthError",
        "MaaSConfigError",
        "MaaSError",
        "MaaSInputError",
        "MaaSIntegrityError",
        "MaaSJobCreationUncertainError",
        "MaaSJobFailedError",
        "MaaSNotFoundError",
        "MaaSRateLimitError",
        "MaaSResultsGoneError",
        "MaaSRetryableError",
        "MaaSTimeoutError",
    },
    "airflow_provider_maas.results": {
        "MISSING_STATUS",
        "ResultRecord",
        "ResultSummary",
        "ResultsFormatError",
        "extract_images",
        "iter_results",
        "parse_result_line",
        "request_key",
        "summarize",
    },
    "airflow_provider_maas.emulator": {"EmulatorConfig", "EmulatorHandle", "MaaSEmulator", "run_emulator"},
    # DAG code gets the two a task needs to write a file the operators then read; the package's own
    # plumbing (its writers, CHUNK_SIZE...) is not promised (see test_storage_promises_only_the_public_names).
    "airflow_provider_maas.storage": {"to_path", "uri_of"},
}
#: Modules whose ``__all__`` is exactly their public names.
EXACT = (
    "airflow_provider_maas.operators.maas",
    "airflow_provider_maas.hooks.maas",
    "airflow_provider_maas.results",
    "airflow_provider_maas.emulator",
    "airflow_provider_maas.storage",
)
README = (ROOT / "README.md").read_text()
MANUAL = {"README.md": README, **{f"docs/{p.name}": p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}}


def _dag_facing_sources() -> dict[str, str]:
    """The example DAGs and every python snippet of the manual: what users copy."""
    sources = {f"example_dags/{p.name}": p.read_text() for p in sorted((ROOT / "example_dags").glob("*.py"))}
    for name, text in MANUAL.items():
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.S)):
            sources[f"{name} python snippet {i}"] = block
    return sources


def _provider_imports(code: str) -> list[tuple[str, str]]:
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("airflow_provider_maas"):
            found += [(node.module or "", alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("airflow_provider_maas")]
    return found


@pytest.mark.parametrize("name", sorted(_dag_facing_sources()))
def test_dag_facing_code_imports_only_public_names(name):
    for module, imported in _provider_imports(_dag_facing_sources()[name]):
        assert module in PUBLIC, f"{name} imports the internal module {module}"
        assert imported in PUBLIC[module], f"{name} imports {imported} from {module}: not a public name"


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import(module):
    loaded = importlib.import_module(module)
    missing = sorted(n for n in PUBLIC[module] if not hasattr(loaded, n))
    assert not missing, f"{module} lacks {missing}"
    if module in EXACT:
        assert set(loaded.__all__) == PUBLIC[module], f"{module}.__all__ changed: update PUBLIC and the manual"


#: What storage/__init__.py promised DAG code before issue 21: now the package's own plumbing,
#: still importable from the module that defines it.
STORAGE_PLUMBING = {
    "airflow_provider_maas.storage.paths": {
        "CHUNK_SIZE",
        "INSTALL_HINTS",
        "check_destination",
        "check_within",
        "conn_id_of",
        "filesystem_of",
        "is_local",
        "open_source",
        "source_size",
    },
    "airflow_provider_maas.storage.writes": {
        "STALE_PART_SECONDS",
        "EarlyWriteback",
        "atomic_writer",
        "remove_stale_parts",
    },
}


def test_storage_promises_only_the_public_names():
    from airflow_provider_maas import storage

    assert set(storage.__all__) == PUBLIC["airflow_provider_maas.storage"] == {"to_path", "uri_of"}
    namespace: dict[str, object] = {}
    exec("from airflow_provider_maas.storage import *", namespace)  # what a star import gives DAG code
    assert {name for name in namespace if not name.startswith("__")} == {"to_path", "uri_of"}
    for module, names in STORAGE_PLUMBING.items():
        loaded = importlib.import_module(module)
        assert all(hasattr(loaded, name) for name in names), module
        assert not names & PUBLIC["airflow_provider_maas.storage"]


def test_every_public_module_and_storage_name_is_in_the_manual():
    text = "\n".join(MANUAL.values())
    for module in PUBLIC:
        assert (
            module in text or module.rsplit(".", 1)[0].replace(".", "/").removeprefix("airflow_provider_maas/") in text
        )
    module_map = README[README.index("`airflow_provider_maas/`:") :]
    for name in PUBLIC["airflow_provider_maas.storage"]:
        assert f"`{name}`" in module_map, f"README's module map does not name storage's {name}"


def test_main_operator_comes_from_its_documented_module():
    from airflow_provider_maas.operators import maas

    assert "from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator" in README
    assert "Operators: `airflow_provider_maas.operators.maas`" in README
    assert maas.MaaSBatchPredictionOperator.__name__ == "MaaSBatchPredictionOperator"


def test_main_operator_is_defined_in_a_public_module_and_its_old_path_still_imports():
    from airflow_provider_maas.operators import _batch, batch, maas

    assert maas.MaaSBatchPredictionOperator is batch.MaaSBatchPredictionOperator is _batch.MaaSBatchPredictionOperator
    module = maas.MaaSBatchPredictionOperator.__module__
    assert module == "airflow_provider_maas.operators.batch" and not module.rsplit(".", 1)[-1].startswith("_")
