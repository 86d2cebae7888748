#!/usr/bin/env bash
# What `make test-distributed` needs, installed only when missing (a no-op, in about a second, when
# everything is there):
#   - Debian's postgresql and redis-server (apt-get as root; `apt-get update` only when one is missing);
#   - in the virtualenv of PYTHON (`make test-distributed` uses .venv-distributed):
#     apache-airflow-providers-celery, apache-airflow-providers-amazon[s3fs], moto[server] and the
#     PostgreSQL drivers, every version pinned by scripts/constraints-distributed.txt, installed in an
#     order that leaves pip's resolver nothing to backtrack over.
# Usage: scripts/distributed/install.sh PYTHON
set -euo pipefail
PYTHON=${1:?usage: scripts/distributed/install.sh PYTHON (the venv interpreter that runs the tests)}
cd "$(dirname "$0")/../.."
CONSTRAINTS=scripts/constraints-distributed.txt

# --- Debian packages -------------------------------------------------------------------------------
missing=()
for pkg in postgresql redis-server; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "install.sh: installing ${missing[*]} needs root or sudo" >&2; exit 1; }
        SUDO=sudo
    fi
    echo "install.sh: installing Debian's ${missing[*]}"
    $SUDO apt-get update -q
    # RUNLEVEL=1: the packages do not start their own services (the tests run their own servers).
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- Python packages -------------------------------------------------------------------------------
pinned() {  # exits 0 when every named package is installed at its pinned version
    "$PYTHON" - "$CONSTRAINTS" "$@" <<'PY'
import importlib.metadata as md
import re
import sys

pins = {}
for line in open(sys.argv[1]):
    m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
    if m:
        pins[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[2]
for name in sys.argv[2:]:
    key = re.sub(r"[-_.]+", "-", name).lower()
    try:
        if md.version(name) != pins[key]:
            sys.exit(1)
    except md.PackageNotFoundError:
        sys.exit(1)
PY
}
pip_install() {
    "$PYTHON" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" "$@"
}
if ! pinned s3fs boto3 botocore apache-airflow-providers-amazon apache-airflow-providers-http moto \
    apache-airflow-providers-celery celery redis psycopg2-binary asyncpg; then
    echo "install.sh: installing the amazon and celery providers, moto and the PostgreSQL drivers (pinned)"
    # The order avoids pip's backtracking over the amazon provider's optional-looking dependencies
    # (pyathena, sagemaker-studio, ...): s3fs first (matches the installed fsspec), then boto, then the
    # providers without their dependencies, then the rest.
    pip_install s3fs
    pip_install boto3 botocore inflection jsonpath_ng
    pip_install --no-deps apache-airflow-providers-amazon apache-airflow-providers-http
    pip_install "moto[server]"
    pip_install apache-airflow-providers-celery "celery[redis]" psycopg2-binary asyncpg
fi
"$PYTHON" -c "
import importlib.metadata as m
print('install.sh:', ', '.join(f'{p} {m.version(p)}' for p in ('apache-airflow', 'apache-airflow-providers-celery', 'apache-airflow-providers-amazon', 's3fs', 'moto')))"
