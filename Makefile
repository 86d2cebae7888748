# One virtualenv per checkout, reused by every target. PYTHON can point at another interpreter.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 0

.PHONY: install demo test test-unit lint unit bench bench-smoke clean test-distributed clean-distributed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Run the example DAG end to end against the local emulator (throwaway AIRFLOW_HOME).
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## Lint, type-check and run the whole test suite (browser test included: `browser-deps` first).
test: $(STAMP) lint browser-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

## The fast tier alone: pure modules, no emulator, no Airflow task (`-m integration` / `-m system`: the others).
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks --smoke

clean:
	rm -rf $(VENV) .demo .airflow-test

# Distributed deployment (tests/distributed, issue 12) ---------------------------------------------
# PostgreSQL, Redis, moto's S3 server, the emulator and Airflow's api-server, scheduler (CeleryExecutor),
# dag-processor, triggerer and two Celery workers, all on loopback; every DAG path on s3://.
# Its own virtualenv: with the amazon provider installed, s3:// resolves, so the tests of what a user
# WITHOUT it sees (a clear MaaSInputError) cannot run in the same one. install.sh adds Debian's
# postgresql/redis-server and the pinned providers when missing. `timeout` bounds the whole run; the
# tests stop every process they started, even then.
DIST_VENV ?= .venv-distributed
DIST_STAMP := $(DIST_VENV)/.installed
DIST_TIMEOUT ?= 1200

$(DIST_STAMP): pyproject.toml
	[ -x $(DIST_VENV)/bin/python ] || $(PYTHON) -m venv $(DIST_VENV)
	$(DIST_VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(DIST_STAMP)

## The provider on a distributed Airflow (CeleryExecutor, PostgreSQL, Redis, S3): installs what it needs.
test-distributed: $(DIST_STAMP)
	bash scripts/distributed/install.sh $(DIST_VENV)/bin/python
	MAAS_TEST_DISTRIBUTED=1 timeout -k 30 $(DIST_TIMEOUT) $(DIST_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/distributed

clean-distributed:
	rm -rf $(DIST_VENV)

# Browser test and Airflow version matrix -------------------------------------------------------
# The browser test (tests/browser) is part of `make test`, which runs `make browser-deps` first; the
# test fails when Chromium or playwright is missing, unless MAAS_SKIP_BROWSER_TESTS=1 outside CI.
# Each older Airflow runs in its own venv pinned by scripts/constraints-airflow-X.Y.txt (scripts/compat.sh).
AF30_VENV ?= .venv-af30
AF31_VENV ?= .venv-af31
AF32_VENV ?= .venv-af32
AF30_STAMP := $(AF30_VENV)/.installed
# The deferrable paths in a real deployment (issue 24): api-server, scheduler (LocalExecutor), dag-processor
# and triggerer as processes, the emulator, a triggerer restart; about a minute per Airflow line. On 3.3 it
# is part of `make test`; every compat target below runs it on its own line, with the in-process test of the
# triggers under the triggerer's comms channel.
DEPLOYMENT_TESTS ?= tests/test_trigger_comms.py tests/test_deployment_smoke.py
COMPAT_TESTS ?= tests/test_hook.py tests/test_operators.py tests/test_create_before_3_3.py tests/test_sensor.py tests/test_trigger.py \
	tests/test_example_dags.py tests/test_compat_assets.py tests/browser $(DEPLOYMENT_TESTS)
# On 3.0, dag.test() does not register assets: tests/test_compat_assets.py registers them first.
COMPAT_DESELECT ?= --deselect tests/test_example_dags.py::test_download_attaches_summary_to_asset_event

# On 3.1 and 3.2 (to keep CI short): the example DAGs end to end, the triggers, the real deployment.
COMPAT_NEWER_TESTS ?= tests/test_example_dags.py tests/test_trigger.py $(DEPLOYMENT_TESTS)

.PHONY: browser-deps test-browser screenshot test-compat test-compat-3.1 test-compat-3.2 ci clean-compat test-deployment

## Debian's chromium (apt-get, as root) and playwright in $(VENV); does nothing when both are there.
browser-deps: $(STAMP)
	bash scripts/ci_browser.sh $(BIN)/python

## The connection form and the batch progress tab in the real Airflow UI, in headless Chromium.
test-browser: browser-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/browser

## Rewrite docs/connection-form.png and docs/batch-progress.png from a run of the browser tests.
screenshot: browser-deps
	MAAS_UPDATE_DOCS_SCREENSHOT=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/browser

$(AF30_STAMP): pyproject.toml scripts/constraints-airflow-3.0.txt scripts/compat.sh
	bash scripts/compat.sh $(AF30_VENV) 3.0

$(AF31_VENV)/.installed: pyproject.toml scripts/constraints-airflow-3.1.txt scripts/compat.sh
	bash scripts/compat.sh $(AF31_VENV) 3.1

$(AF32_VENV)/.installed: pyproject.toml scripts/constraints-airflow-3.2.txt scripts/compat.sh
	bash scripts/compat.sh $(AF32_VENV) 3.2

## The hook, operator, sensor, trigger, example DAG, browser (connection form; batch progress link and page)
## and real-deployment tests on Airflow 3.0 (second venv).
test-compat: $(AF30_STAMP)
	bash scripts/ci_browser.sh $(AF30_VENV)/bin/python
	$(AF30_VENV)/bin/python -m pytest -q -p no:cacheprovider -p tests.compat_plugin $(COMPAT_DESELECT) $(COMPAT_TESTS)

## The example DAG, trigger and real-deployment tests on Airflow 3.1 (own venv).
test-compat-3.1: $(AF31_VENV)/.installed
	$(AF31_VENV)/bin/python -m pytest -q -p no:cacheprovider -p tests.compat_plugin $(COMPAT_NEWER_TESTS)

## The example DAG, trigger and real-deployment tests on Airflow 3.2 (own venv).
test-compat-3.2: $(AF32_VENV)/.installed
	$(AF32_VENV)/bin/python -m pytest -q -p no:cacheprovider -p tests.compat_plugin $(COMPAT_NEWER_TESTS)

## The real-deployment tests alone (DEPLOYMENT_TESTS): on Airflow 3.3, or with SERIES=3.0, 3.1 or 3.2 on that
## line's venv (built first when missing).
SERIES_VENV = $(if $(SERIES),$(AF$(subst .,,$(SERIES))_VENV),$(VENV))
test-deployment: $(STAMP)
	$(if $(SERIES),$(MAKE) $(SERIES_VENV)/.installed)
	$(SERIES_VENV)/bin/python -m pytest -q -p no:cacheprovider -p tests.compat_plugin $(DEPLOYMENT_TESTS)

## What CI runs (.ci/run): the whole suite on the newest Airflow, then Airflow 3.0, 3.1 and 3.2.
ci: test test-compat test-compat-3.1 test-compat-3.2

clean-compat:
	rm -rf $(AF30_VENV) $(AF31_VENV) $(AF32_VENV)
