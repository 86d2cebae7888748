"""One try of the batch operator in a process of its own: ``python tests/state_try.py SOURCE DEST
STORE OUT [key=value ...]`` writes ``{"outcome": "success" | <error type>, "message"}`` to OUT.

``tests/test_state_fail_closed.py`` starts two at once on one task instance (two live tries). The
task state store is a JSON file both share; the connection comes from the environment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import FileStateStore, batch_operator, make_context


def main(source: str, dest: str, store: str, out: str, *settings: str) -> None:
    context = make_context(FileStateStore(store))
    context["ti"].max_tries = 1  # both are tries of one clear epoch
    kwargs = {key: json.loads(value) for key, value in (item.split("=", 1) for item in settings)}
    try:
        batch_operator(Path(source), Path(dest), **kwargs).execute(context)
        result = {"outcome": "success", "message": ""}
    except Exception as err:
        result = {"outcome": type(err).__name__, "message": str(err)}
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
