#!/usr/bin/env bash
# Builds the test virtualenv of an older Airflow: apache-airflow X.Y.z, this package (editable) with its
# test extras, wtforms (what the 3.0/3.1 UI needs to show the connection form) and playwright, all pinned
# by scripts/constraints-airflow-X.Y.txt (frozen from a venv that passes; see each file's header).
# Usage: scripts/compat.sh [VENV] [X.Y]   (defaults .venv-af30 and 3.0; PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-af30}
SERIES=${2:-3.0}
PYTHON=${PYTHON:-python3}
CONSTRAINTS=scripts/constraints-airflow-$SERIES.txt
[ -f "$CONSTRAINTS" ] || { echo "compat.sh: no $CONSTRAINTS" >&2; exit 1; }
AIRFLOW_VERSION=$(sed -n 's/^apache-airflow==//p' "$CONSTRAINTS")

rm -f "$VENV/.installed"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -c "$CONSTRAINTS" \
    "apache-airflow==$AIRFLOW_VERSION" -e '.[test]' wtforms playwright
"$VENV/bin/pip" check --disable-pip-version-check
"$VENV/bin/python" -c "import airflow; print('Airflow', airflow.__version__, 'in $VENV')"
touch "$VENV/.installed"
