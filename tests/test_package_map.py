"""``batch/``'s package docstring is its map: every module in it is named there (by ``name``), so a
new module is placed in one of its groups when it is added, not found missing later (issue 21)."""

from __future__ import annotations

import re

import airflow_provider_maas.batch as batch
from tests.test_readme import PACKAGE


def test_the_batch_package_map_names_every_module():
    named = set(re.findall(r"``(\w+)``", batch.__doc__ or ""))
    modules = {path.stem for path in (PACKAGE / "batch").glob("*.py") if not path.name.startswith("_")}
    assert not modules - named, f"batch/__init__.py's map lacks {sorted(modules - named)}"
