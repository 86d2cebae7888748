"""``batch/``'s package docstrings are its map: every module is named (by ``name``) in the docstring of
its folder, so a new module is placed in one of its groups when it is added, not found missing later
(issue 21)."""

from __future__ import annotations

import importlib
import re

import pytest

from tests.test_readme import PACKAGE

FOLDERS = ["batch", "batch/inputs", "batch/record", "batch/cost", "batch/answers"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_batch_package_map_names_every_module(folder):
    package = importlib.import_module("airflow_provider_maas." + folder.replace("/", "."))
    named = set(re.findall(r"``(\w+)``", package.__doc__ or ""))
    modules = {path.stem for path in (PACKAGE / folder).glob("*.py") if not path.name.startswith("_")}
    assert not modules - named, f"{folder}/__init__.py's map lacks {sorted(modules - named)}"


def test_every_batch_folder_is_in_the_map():
    folders = {str(p.parent.relative_to(PACKAGE)) for p in (PACKAGE / "batch").rglob("__init__.py")}
    assert folders == set(FOLDERS)
    top = importlib.import_module("airflow_provider_maas.batch").__doc__ or ""
    assert all(f"``{f.split('/')[-1]}/``" in top for f in FOLDERS[1:])
