"""MaaSBatchPredictionOperator: input of any size, upload, create, wait, download, merge, in one task."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_maas._compat import conf

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_maas.hooks.maas import MaaSHook

#: Key in ``context["task_state_store"]`` (Airflow >= 3.3) holding the progress of a task instance.
PROGRESS_STATE_KEY = "maas_batch_progress"
PROGRESS_VERSION = 1


class MaaSBatchPredictionOperator(BaseOperator):
    """Run a whole batch in one task: split, upload, create jobs, wait, download, merge in input order.

    The input may hold any number of requests: it is split into shards that fit one upload
    (100 requests, 50 MB), at most ``max_active_jobs`` jobs run at once, a shard whose job ends
    FAILED or EXPIRED is submitted again up to ``shard_retries`` times, and the results are written
    to ``destination`` in the order of the input requests (matched by normalised request, as the
    service neither keeps order nor echoes requests byte for byte). Requests that failed or have no
    result go to ``<destination stem>.failed.jsonl``, ready to resubmit.

    Resumable: progress (uploaded files, job names) is saved in ``task_state_store`` on
    Airflow >= 3.3 and carried across deferrals, so a retry reconnects to its jobs instead of
    paying for new ones.

    :param source: Requests JSONL: local path, URI or ``ObjectStoragePath`` (templated).
    :param destination: Where to write the ordered results (templated).
    :param display_name: Job display name prefix (templated). Default: dag, task, run.
    :param poll_interval: Seconds between status polls.
    :param deferrable: Wait in the triggerer instead of holding a worker slot.
    :param max_active_jobs: At most this many jobs in flight at once.
    :param shard_retries: Resubmissions of a shard whose job ended FAILED or EXPIRED.
    :param fail_on_partial: Fail (after writing every output) if any request failed.
    :param wait_timeout: Give up waiting after this many seconds (jobs keep running: no cancel call).
    """

    template_fields = ("source", "destination", "display_name", "endpoint", "maas_conn_id")

    def __init__(
        self,
        *,
        source: Any,
        destination: Any,
        display_name: str | None = None,
        poll_interval: float = 60,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        max_active_jobs: int = 10,
        shard_retries: int = 2,
        fail_on_partial: bool = False,
        wait_timeout: float | None = None,
        max_requests_per_file: int = 100,
        max_bytes_per_file: int = 50 * 1024 * 1024,
        maas_conn_id: str = "maas_default",
        endpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_active_jobs < 1:
            raise ValueError(f"max_active_jobs must be at least 1, got {max_active_jobs}")
        self.source = source
        self.destination = destination
        self.display_name = display_name
        self.poll_interval = poll_interval
        self.deferrable = deferrable
        self.max_active_jobs = max_active_jobs
        self.shard_retries = shard_retries
        self.fail_on_partial = fail_on_partial
        self.wait_timeout = wait_timeout
        self.max_requests_per_file = max_requests_per_file
        self.max_bytes_per_file = max_bytes_per_file
        self.maas_conn_id = maas_conn_id
        self.endpoint = endpoint

    @cached_property
    def hook(self) -> MaaSHook:
        from airflow_provider_maas.hooks.maas import MaaSHook

        return MaaSHook(maas_conn_id=self.maas_conn_id, endpoint=self.endpoint)

    # Entry points ---------------------------------------------------------------------------
    def execute(self, context: Context) -> str:
        return self._run(context, self._plan(context))

    def execute_complete(self, context: Context, event: dict[str, Any], progress: dict[str, Any] | None = None) -> str:
        """Resume after the trigger: record the ended jobs, then go on."""
        from airflow_provider_maas.exceptions import MaaSError, MaaSTimeoutError

        if not isinstance(event, dict) or event.get("status") not in {"success", "error", "timeout"}:
            raise MaaSError(f"Unexpected event from the MaaS trigger: {event!r}")
        progress = progress or event.get("payload") or self._saved(context)
        if not isinstance(progress, dict) or "shards" not in progress:
            raise MaaSError("Resumed without the batch progress (no kwargs, payload or task state); retry the task.")
        if event["status"] == "error":
            raise MaaSError(f"Waiting for the batch jobs failed: {event.get('message')}")
        if event["status"] == "timeout":
            running = [s["job_name"] for s in progress["shards"] if s["status"] == "running"]
            raise MaaSTimeoutError(f"{event.get('message')} Still running: {', '.join(running)}")
        self._apply(context, progress, event.get("events") or [])
        return self._run(context, progress)

    # Steps ----------------------------------------------------------------------------------
    def _plan(self, context: Context) -> dict[str, Any]:
        """Validate and plan the shards; reuse the saved progress of a previous try if it matches."""
        from airflow_provider_maas.jsonl import plan_shards
        from airflow_provider_maas.storage import open_source

        with open_source(self.source) as handle:
            plans = plan_shards(handle, max_requests=self.max_requests_per_file, max_bytes=self.max_bytes_per_file)
        fingerprint = [p.sha256 for p in plans]
        saved = self._saved(context)
        if isinstance(saved, dict) and saved.get("fingerprint") == fingerprint:
            running = sum(1 for s in saved["shards"] if s["status"] == "running")
            done = sum(1 for s in saved["shards"] if s["status"] == "done")
            self.log.info(
                "Resuming a previous try: %d shards done, %d jobs running; no job is recreated", done, running
            )
            return saved
        deadline = time.time() + self.wait_timeout if self.wait_timeout else None
        shards = [
            {
                "plan": dataclasses.asdict(p),
                "file_name": None,
                "job_name": None,
                "attempts": 0,
                "status": "pending",
                "state": None,
                "result_uri": None,
                "error": None,
            }
            for p in plans
        ]
        self.log.info("Planned %d shards for %d requests", len(shards), sum(p.requests for p in plans))
        return {"version": PROGRESS_VERSION, "fingerprint": fingerprint, "deadline": deadline, "shards": shards}

    @staticmethod
    def _saved(context: Context) -> Any:
        from airflow_provider_maas.operators._common import task_state

        store = task_state(context)
        return store.get(PROGRESS_STATE_KEY) if store is not None else None

    def _save(self, context: Context, progress: dict[str, Any]) -> None:
        store = context.get("task_state_store")
        if store is not None:
            store.set(PROGRESS_STATE_KEY, progress)

    def _run(self, context: Context, progress: dict[str, Any]) -> str:
        while True:
            self._submit(context, progress)
            running = [s for s in progress["shards"] if s["status"] == "running"]
            if not running:
                return self._finish(context, progress)
            if self.deferrable:
                self._defer(progress, running)
            events = self._poll_once(running)
            if events:
                self._apply(context, progress, events)
            else:
                self._check_deadline(progress)
                time.sleep(self.poll_interval)

    def _submit(self, context: Context, progress: dict[str, Any]) -> None:
        """Upload and create jobs for pending shards, up to ``max_active_jobs`` in flight."""
        from airflow_provider_maas.naming import display_name, upload_name

        shards = progress["shards"]
        running = sum(1 for s in shards if s["status"] == "running")
        for shard in shards:
            if running >= self.max_active_jobs:
                break
            if shard["status"] != "pending":
                continue
            index = shard["plan"]["index"]
            if shard["file_name"] is None:
                shard["file_name"] = self._upload(shard, upload_name(context, shard["plan"]["sha256"], shard=index))
            name = f"{self.display_name}#{index}" if self.display_name else display_name(context, shard=index)
            job = self.hook.create_batch_job(shard["file_name"], name)
            shard.update(job_name=job["name"], status="running", state=job.get("state"), attempts=shard["attempts"] + 1)
            self._save(context, progress)
            running += 1
            self.log.info("Shard %d: job %s created (%d requests)", index, job["name"], shard["plan"]["requests"])

    def _upload(self, shard: dict[str, Any], name: str) -> str:
        from airflow_provider_maas.jsonl import ShardPlan, copy_shard
        from airflow_provider_maas.storage import CHUNK_SIZE, open_source

        with open_source(self.source) as handle, tempfile.SpooledTemporaryFile(max_size=8 * CHUNK_SIZE) as tmp:
            copy_shard(handle, ShardPlan(**shard["plan"]), tmp)
            tmp.seek(0)
            return self.hook.upload_file(tmp, name)["name"]

    def _defer(self, progress: dict[str, Any], running: list[dict[str, Any]]) -> None:
        from airflow_provider_maas.triggers.maas import MaaSBatchJobsTrigger

        deadline = progress.get("deadline")
        self.defer(
            trigger=MaaSBatchJobsTrigger(
                job_names=[s["job_name"] for s in running],
                maas_conn_id=self.maas_conn_id,
                endpoint=self.endpoint,
                poll_interval=self.poll_interval,
                end_time=deadline,
                payload=progress,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=max(1.0, deadline - time.time()) + 60) if deadline else None,
        )

    def _poll_once(self, running: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from airflow_provider_maas.events import job_event
        from airflow_provider_maas.states import StateKind, classify_state, job_error_message

        events = []
        for shard in running:
            job = self.hook.get_batch_job(shard["job_name"])
            kind = classify_state(job.get("state"))
            if kind in (StateKind.SUCCEEDED, StateKind.PARTIAL):
                events.append(job_event("success", shard["job_name"], job, f"ended {job.get('state')}"))
            elif kind is StateKind.FAILED:
                events.append(job_event("error", shard["job_name"], job, job_error_message(job)))
        return events

    def _check_deadline(self, progress: dict[str, Any]) -> None:
        from airflow_provider_maas.exceptions import MaaSTimeoutError

        deadline = progress.get("deadline")
        if deadline and time.time() > deadline:
            running = [s["job_name"] for s in progress["shards"] if s["status"] == "running"]
            raise MaaSTimeoutError(
                f"Jobs still running after wait_timeout={self.wait_timeout}s: {', '.join(running)}; they keep "
                "running on the service (no cancel call)."
            )

    def _apply(self, context: Context, progress: dict[str, Any], events: list[dict[str, Any]]) -> None:
        """Record ended jobs: download results of those that succeeded, resubmit failed shards."""
        from airflow_provider_maas.exceptions import MaaSError
        from airflow_provider_maas.states import JobState

        by_job = {s["job_name"]: s for s in progress["shards"] if s["status"] == "running"}
        for event in events:
            shard = by_job.get(event.get("job_name"))
            if shard is None:
                continue
            job = event.get("job")
            index = shard["plan"]["index"]
            if event.get("status") == "success" and job:
                shard.update(status="done", state=job.get("state"), result_uri=self._download(shard["job_name"], index))
            elif job is None:
                raise MaaSError(f"Waiting for job {shard['job_name']} (shard {index}) failed: {event.get('message')}")
            elif job.get("state") in (JobState.FAILED, JobState.EXPIRED) and shard["attempts"] <= self.shard_retries:
                self.log.warning(
                    "Shard %d: %s; submitting it again (attempt %d)", index, event.get("message"), shard["attempts"] + 1
                )
                shard.update(status="pending", job_name=None, state=job.get("state"), error=event.get("message"))
            else:
                self.log.error("Shard %d: %s; its requests go to the failed file", index, event.get("message"))
                shard.update(status="failed", state=job.get("state"), error=event.get("message"))
            self._save(context, progress)

    def _parts_dir(self) -> Any:
        from airflow_provider_maas.storage import to_path

        dest = to_path(self.destination, what="destination")
        return dest.parent / f".{dest.name}.parts"

    def _download(self, job_name: str, index: int) -> str:
        from airflow_provider_maas.storage import uri_of

        path = self._parts_dir() / f"part-{index:05d}.jsonl"
        self.hook.download_results(job_name, path)
        return uri_of(path)

    def _finish(self, context: Context, progress: dict[str, Any]) -> str:
        from airflow_provider_maas.exceptions import MaaSJobFailedError
        from airflow_provider_maas.merge import merge_results
        from airflow_provider_maas.operators._common import publish_summary
        from airflow_provider_maas.storage import to_path, uri_of

        shards = progress["shards"]
        sources = [s["result_uri"] for s in shards if s["status"] == "done"]
        for shard in shards:  # results vanish after 7 days; a part lost since is fetched again
            if shard["status"] == "done" and not to_path(shard["result_uri"]).exists():
                self._download(shard["job_name"], shard["plan"]["index"])
        summary = merge_results(sources, self.source, self.destination)
        summary.update(
            shards=len(shards),
            failed_shards=sum(1 for s in shards if s["status"] == "failed"),
            job_names=[s["job_name"] for s in shards if s["job_name"]],
        )
        dest_uri = uri_of(to_path(self.destination, what="destination"))
        publish_summary(self, context, summary, dest_uri)
        parts = self._parts_dir()
        if parts.exists():
            parts.fs.rm(str(parts.path), recursive=True)
        if self.fail_on_partial and summary["failed"]:
            raise MaaSJobFailedError(
                f"{summary['failed']} of {summary['requests']} requests failed (fail_on_partial=True); "
                f"results are in {dest_uri}, failed requests in {summary['failed_uri']}"
            )
        return dest_uri
