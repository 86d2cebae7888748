"""A distributed Airflow deployment on one machine, for ``make test-distributed`` (issue 12).

Every component is a real server process on loopback, started with free ports and stopped (with
everything it started) at the end, whatever happened:

* PostgreSQL (Debian's, a throwaway cluster in a temporary directory; run as the ``postgres`` user
  when we are root, as the server refuses root), Redis (the Celery broker), ``moto_server`` (an
  S3-compatible object store) and ``maas-emulator`` (the MaaS_Ge API, results shuffled);
* Airflow's ``api-server``, ``scheduler`` (CeleryExecutor), ``dag-processor``, ``triggerer`` and two
  ``airflow celery worker`` processes.

Each Airflow component is its own "machine": its own ``AIRFLOW_HOME`` (config, logs), working
directory and ``TMPDIR``, and the workers and the DAG processor each get their own copy of the DAG
files. Nothing but the object store and the metadata database is shared. Each worker reports its own
host name in the task instances (``[core] hostname_callable``, see ``worker_hostname.py``).

``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` point at a closed loopback port and there are no AWS
credentials in the environment: a path that lost its connection id fails here, at once, instead of
reaching for AWS.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.airflow_processes import alive, cmdline, descendants, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
DAGS = Path(__file__).resolve().parent / "dags"
BIN = Path(sys.executable).parent

API_KEY = "dist-secret-key-0123456789"
ENDPOINT = "dist-endpoint"
S3_CONN_ID = "s3_test"
BUCKET = "maas-dist"
WORKERS = ("worker-a", "worker-b")
#: Lines for the end of the session (conftest.py prints them): which worker ran which task, timings.
REPORT: list[str] = []
#: Generous bounds for a loaded 2-core machine; each wait ends as soon as its condition holds.
STARTUP = 180


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the test process dies (Linux PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    request = urllib.request.Request(url, headers=headers or {})
    with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=3) as resp:
        return resp.status == 200
    return False


def _postgres_bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL's initdb was not found: run scripts/distributed/install.sh (Debian postgresql)")
    return Path(initdb).resolve().parent


class Deployment:
    """The whole deployment; use as a context manager (``__exit__`` stops everything)."""

    def __init__(self, emulator_args: tuple[str, ...] = ()) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="maas-distributed-"))
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.emulator_args = emulator_args
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._order: list[str] = []
        self._known_pids: dict[int, str] = {}
        self.pg_port = free_port()
        self.redis_port = free_port()
        self.moto_port = free_port()
        self.api_port = free_port()
        self.emulator_url = ""
        self.timings: list[str] = []
        self._pgroot: Path | None = None
        self._jwt_secret = secrets.token_urlsafe(32)
        self._closed_port = free_port()  # nothing listens there: where a path without its connection goes
        self._started = time.monotonic()

    # Lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def phase(self, name: str) -> None:
        self.timings.append(f"{name} {time.monotonic() - self._started:.0f}s")

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as component ``name`` in its own process group, output to ``logs/NAME.log``."""
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                env=env if env is not None else self.base_env(),
                cwd=cwd or self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                user=user,
                preexec_fn=_die_with_parent,
            )
        self.procs[name] = proc
        if name not in self._order:
            self._order.append(name)
        return proc

    def check_running(self, *names: str) -> None:
        for name in names or tuple(self.procs):
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}")

    def remember_tree(self) -> None:
        """Note every process below our components, to kill them even once orphaned."""
        for proc in self.procs.values():
            if proc.poll() is None:
                for pid in descendants(proc.pid):
                    self._known_pids.setdefault(pid, cmdline(pid))

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 20) -> None:
        """Send ``sig`` to component ``name``'s process group and to every process it started."""
        proc = self.procs[name]
        tree = descendants(proc.pid) if proc.poll() is None else set()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for pid in tree:  # also those that left the group (e.g. a task's own session)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)

    def stop_all(self) -> None:
        """Stop Airflow first, then the servers; SIGKILL whatever is left, orphans included."""
        self.remember_tree()
        airflow = [n for n in self._order if n not in {"postgres", "redis", "moto", "emulator"}]
        servers = [n for n in ("emulator", "moto", "redis", "postgres") if n in self.procs]
        for group in (airflow, servers):
            for name in group:
                if self.procs[name].poll() is None:
                    # postgres: SIGINT is the fast shutdown (SIGTERM waits for every client to leave).
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.procs[name].pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
            deadline = time.monotonic() + 15
            for name in group:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.procs[name].wait(timeout=max(0.1, deadline - time.monotonic()))
            for name in group:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.procs[name].pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.procs[name].wait(timeout=5)
        for pid, title in self._known_pids.items():
            if alive(pid) and title and cmdline(pid) == title:  # orphans only, never a reused pid
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if os.environ.get("MAAS_DIST_KEEP"):
            print(f"\ndistributed deployment kept in {self.root} (PostgreSQL: {self._pgroot})")
            return
        shutil.rmtree(self.root, ignore_errors=True)
        if self._pgroot:
            shutil.rmtree(self._pgroot, ignore_errors=True)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def diagnose(self, names: tuple[str, ...] = ()) -> str:
        return "\n".join(f"--- {n} (tail):\n{self.log_tail(n, 15)}" for n in names or tuple(self._order))

    # Servers --------------------------------------------------------------------------------
    def start_postgres(self) -> None:
        bindir = _postgres_bindir()
        user = "postgres" if os.geteuid() == 0 else None  # postgres refuses to run as root
        pgroot = Path(tempfile.mkdtemp(prefix="maas-distributed-pg-"))  # /tmp: readable by that user
        self._pgroot = pgroot
        if user:
            entry = pwd.getpwnam(user)
            os.chown(pgroot, entry.pw_uid, entry.pw_gid)
        data = pgroot / "data"
        result = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "airflow", "-A", "trust", "-E", "UTF8", "--no-sync"],
            user=user,
            capture_output=True,
            timeout=120,
            cwd=pgroot,
        )
        assert result.returncode == 0, f"initdb failed:\n{result.stdout.decode()}\n{result.stderr.decode()}"
        self.start(
            "postgres",
            [
                str(bindir / "postgres"),
                *("-D", str(data), "-p", str(self.pg_port), "-h", "127.0.0.1", "-k", str(pgroot)),
                *("--fsync=off", "--synchronous_commit=off", "--full_page_writes=off", "--max_connections=300"),
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
            cwd=pgroot,
            user=user,
        )

        def ready() -> bool:
            self.check_running("postgres")
            import psycopg2

            try:
                conn = psycopg2.connect(host="127.0.0.1", port=self.pg_port, user="airflow", dbname="postgres")
            except psycopg2.OperationalError:
                return False
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("CREATE DATABASE airflow")
            conn.close()
            return True

        wait_for("PostgreSQL", ready, 60, diagnose=lambda: self.diagnose(("postgres",)))

    @property
    def sql_url(self) -> str:
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.pg_port}/airflow"

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.pg_port, user="airflow", dbname="airflow")
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()

    def start_redis(self) -> None:
        redis_dir = self.root / "redis"
        redis_dir.mkdir()
        self.start(
            "redis",
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                *("--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(redis_dir)),
                *("--save", "", "--appendonly", "no"),  # nothing on disk: a throwaway broker
            ],
            cwd=redis_dir,
        )

        def ready() -> bool:
            self.check_running("redis")
            import redis

            with contextlib.suppress(redis.exceptions.ConnectionError):
                return bool(redis.Redis(host="127.0.0.1", port=self.redis_port, socket_timeout=2).ping())
            return False

        wait_for("Redis", ready, 30, diagnose=lambda: self.diagnose(("redis",)))

    @property
    def moto_url(self) -> str:
        return f"http://127.0.0.1:{self.moto_port}"

    def start_moto(self) -> None:
        self.start("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.moto_port)])

        def ready() -> bool:
            self.check_running("moto")
            return _http_ok(f"{self.moto_url}/moto-api/")

        wait_for("moto_server", ready, 60, diagnose=lambda: self.diagnose(("moto",)))
        self.s3().create_bucket(Bucket=BUCKET)

    def s3(self) -> Any:
        """A boto3 S3 client of the object store (the test's own view, not Airflow's)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.moto_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def start_emulator(self) -> None:
        ready_file = self.root / "emulator.url"
        self.start(
            "emulator",
            [
                str(BIN / "maas-emulator"),
                *("--port", "0", "--api-key", API_KEY, "--endpoint", ENDPOINT),
                *("--data-dir", str(self.root / "emulator-data"), "--ready-file", str(ready_file)),
                *self.emulator_args,
            ],
        )

        def ready() -> bool:
            self.check_running("emulator")
            return ready_file.exists() and bool(ready_file.read_text().strip())

        wait_for("the MaaS emulator", ready, 60, diagnose=lambda: self.diagnose(("emulator",)))
        self.emulator_url = ready_file.read_text().strip().rstrip("/")

    def emulator(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call an admin route of the emulator (``/_emulator/...``)."""
        request = urllib.request.Request(
            f"{self.emulator_url}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
            method=method,
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    # Airflow --------------------------------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "MAAS_", "AWS_", "PYTEST")) and k != "TMPDIR"
        }
        env["PYTHONPATH"] = str(ROOT)  # tests.distributed.worker_hostname
        return env

    def airflow_env(self, machine: str, **extra: str) -> dict[str, str]:
        """The environment of Airflow component ``machine``: shared settings, its own home and temp dir."""
        home = self.root / machine
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        closed = str(self._closed_port)
        env = self.base_env()
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "TMPDIR": str(home / "tmp"),
                "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CORE__PARALLELISM": "16",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.distributed.worker_hostname.hostname",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_url,
                "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://airflow@127.0.0.1:{self.pg_port}/airflow",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",  # the batch trigger's first poll: 2 s
                # A worker that vanished (SIGKILL, lost machine) is noticed when the task instance's
                # heartbeat is this old (default 300 s).
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
                # The connections, as a secrets backend (here: environment variables) would give them.
                f"AIRFLOW_CONN_{S3_CONN_ID.upper()}": json.dumps(
                    {
                        "conn_type": "aws",
                        "login": "testing",
                        "password": "testing",
                        "extra": {"endpoint_url": self.moto_url, "region_name": "us-east-1"},
                    }
                ),
                "AIRFLOW_CONN_MAAS_DEFAULT": json.dumps(
                    {
                        "conn_type": "maas",
                        "host": self.emulator_url,
                        "password": API_KEY,
                        "extra": {"endpoint": ENDPOINT},
                    }
                ),
                # Anything that reaches for AWS without the connection fails here, at once.
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}",
                "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{closed}",
                "AWS_EC2_METADATA_DISABLED": "true",
                **extra,
            }
        )
        return env

    def start_airflow(self, name: str, *args: str, dags: bool = False, **extra_env: str) -> None:
        env = self.airflow_env(name, **extra_env)
        home = Path(env["AIRFLOW_HOME"])
        if dags:  # this machine's own copy of the DAG files
            shutil.copytree(DAGS, home / "dags", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        self.start(name, [sys.executable, "-m", "airflow", *args], env=env, cwd=home)

    def airflow_cli(self, *args: str, timeout: float = 180) -> str:
        """Run ``airflow ARGS`` as an operator would, from the scheduler's machine."""
        result = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.airflow_env("scheduler"),
            cwd=self.root / "scheduler",
            capture_output=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"airflow {' '.join(args)} failed:\n{result.stderr.decode()[-3000:]}"
        return result.stdout.decode()

    def start_all(self) -> None:
        """Start every server and Airflow component, each started only once the ones it needs answer."""
        self.start_postgres()
        self.start_redis()
        self.start_moto()
        self.start_emulator()
        self.phase("servers up")
        self.airflow_cli("db", "migrate", timeout=300)
        self.phase("db migrated")
        self.start_airflow("api-server", "api-server", "-H", "127.0.0.1", "-p", str(self.api_port))
        self.start_airflow("triggerer", "triggerer")
        for worker in WORKERS:
            self.start_airflow(
                worker,
                "celery",
                "worker",
                "--celery-hostname",
                f"{worker}@%h",
                "--skip-serve-logs",
                "--queues",
                f"default,{worker}",  # its own queue: the DAGs send some steps to a given machine
                dags=True,
                MAAS_DIST_HOSTNAME=worker,
            )
        wait_for(
            "the API server",
            lambda: self.check_running("api-server") or _http_ok(f"http://127.0.0.1:{self.api_port}/execution/health"),
            STARTUP,
            diagnose=self.diagnose,
        )
        for worker in WORKERS:
            wait_for(
                f"Celery {worker}",
                lambda w=worker: self.check_running(w) or " ready." in self.log_tail(w, 200),
                STARTUP,
                diagnose=self.diagnose,
            )
        self.phase("api-server and workers up")

    def start_scheduling(self) -> None:
        """Start the DAG processor and the scheduler: the ``@once`` DAGs then run."""
        self.start_airflow("dag-processor", "dag-processor", dags=True)
        self.start_airflow("scheduler", "scheduler")

    def worker_log(self, worker: str, dag_id: str, task_id: str, attempt: int, map_index: int = -1) -> str:
        """A task's log as written on ``worker``'s own disk."""
        mapped = f"map_index={map_index}/" if map_index >= 0 else ""
        logs = self.root / worker / "logs" / f"dag_id={dag_id}"
        found = sorted(logs.glob(f"run_id=*/task_id={task_id}/{mapped}attempt={attempt}.log"))
        return "".join(p.read_text(errors="replace") for p in found)
