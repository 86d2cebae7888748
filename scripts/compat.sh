#!/usr/bin/env bash
# Builds the Airflow 3.0 test virtualenv (the oldest Airflow this provider supports): apache-airflow
# 3.0.x, this package (editable) with its test extras, wtforms (what the 3.0/3.1 UI needs to show the
# connection form) and playwright, all pinned by scripts/constraints-airflow-3.0.txt.
# Usage: scripts/compat.sh [VENV]   (default .venv-af30; PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-af30}
PYTHON=${PYTHON:-python3}
CONSTRAINTS=scripts/constraints-airflow-3.0.txt
AIRFLOW_VERSION=$(sed -n 's/^apache-airflow==//p' "$CONSTRAINTS")

rm -f "$VENV/.installed"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -c "$CONSTRAINTS" \
    "apache-airflow==$AIRFLOW_VERSION" -e '.[test]' wtforms playwright
"$VENV/bin/pip" check --disable-pip-version-check
"$VENV/bin/python" -c "import airflow; print('Airflow', airflow.__version__, 'in $VENV')"
touch "$VENV/.installed"
