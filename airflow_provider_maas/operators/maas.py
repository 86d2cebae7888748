"""Operators for the MaaS_Ge batch API: upload, create, download, split, merge, and all in one task.

What an operator does when it runs (``batch/``: shards, merge, the create guard; the hook and its
client; ``storage``) is imported by its first execute, not where the DAG is parsed; construction needs
only the settings' limits.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_maas.batch.int_settings import MAX_BYTES_PER_FILE, MAX_REQUESTS_PER_FILE, check_shard_limits
from airflow_provider_maas.exceptions import MaaSInputError, MaaSJobCreationUncertainError
from airflow_provider_maas.flags import FlagParameters, parameter_flag
from airflow_provider_maas.operators import _metrics as metrics
from airflow_provider_maas.operators._common import (
    MaaSBaseOperator,
    RenamedParameters,
    publish_summary,
    renamed,
    reusable_job,
    task_state,
)
from airflow_provider_maas.operators._lineage import LineageMixin, ServiceDataset
from airflow_provider_maas.operators.batch import MaaSBatchPredictionOperator
from airflow_provider_maas.plugins.links import MaaSProgressLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_maas.batch.answers.summary_types import DownloadSummary, MergeSummary, ResultsSummary


#: Key in ``context["task_state_store"]`` (Airflow >= 3.3) holding the created job of a task instance.
JOB_STATE_KEY = "maas_job"

__all__ = [
    "MaaSBatchPredictionOperator",
    "MaaSCreateBatchJobOperator",
    "MaaSDownloadResultsOperator",
    "MaaSMergeResultsOperator",
    "MaaSSplitRequestsOperator",
    "MaaSUploadFileOperator",
]


class MaaSUploadFileOperator(MaaSBaseOperator):
    """Validate a JSONL file of requests and upload it; returns the uploaded file's ``name``.

    Nothing is uploaded if any line is invalid: :class:`~airflow_provider_maas.exceptions.MaaSInputError`
    names the first bad line. At most 100 requests and 50 MB per file (split bigger inputs with
    :class:`MaaSSplitRequestsOperator`).

    :param source: Local path, URI (``file://``, ``s3://``...) or ``ObjectStoragePath`` (templated).
    :param file_name: Name in the service's bucket (templated). Default: unique per DAG run and task
        instance and stable across retries (dag, task, run id, map index, content hash).
    :param maas_conn_id: The Airflow connection of type ``maas``.
    :param endpoint: ENDPOINT id overriding the connection's (templated).
    """

    template_fields = ("source", "file_name", "endpoint", "maas_conn_id")

    def __init__(self, *, source: Any, file_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.file_name = file_name

    def execute(self, context: Context) -> str:
        from airflow_provider_maas.batch.inputs.shards import validate_file
        from airflow_provider_maas.client.naming import upload_name
        from airflow_provider_maas.storage import CHUNK_SIZE, open_source

        with open_source(self.source) as handle:
            stats = validate_file(handle)
        name = self.file_name or upload_name(context, stats.sha256)
        self.log.info("Uploading %d requests (%d bytes) as %r", stats.requests, stats.bytes, name)
        self.record_lineage([self.source], [ServiceDataset.file(self.hook.config, name)])
        if stats.clean:
            return self.hook.upload_file(self.source, name)["name"]
        # Blank lines or no final newline: upload exactly the validated lines, one per line.
        from airflow_provider_maas.batch.inputs.request_lines import iter_request_lines

        with open_source(self.source) as handle, tempfile.SpooledTemporaryFile(max_size=8 * CHUNK_SIZE) as tmp:
            for line in iter_request_lines(handle):
                tmp.write(line.raw)
            tmp.seek(0)
            return self.hook.upload_file(tmp, name)["name"]


class MaaSCreateBatchJobOperator(MaaSBaseOperator):
    """Create a batch job from an uploaded file; returns the job ``name``.

    Never pays twice on its own: a marker is saved before the create is sent and replaced by the
    job's name once the answer is in, in ``task_state_store`` (key ``maas_job``; Airflow >= 3.3) or,
    before Airflow 3.3, in an Airflow Variable ``maas_create.<digest>`` of the task instance
    (:class:`~airflow_provider_maas.batch.record.task_record.VariableStateStore`). A retry
    reuses that job (unless it ended FAILED/CANCELLED/EXPIRED or its results are gone: then it
    creates a new one, and logs it). A retry that finds the create still in flight (lost answer,
    timeout, killed process) fails with
    :class:`~airflow_provider_maas.exceptions.MaaSJobCreationUncertainError` without Airflow
    retries: look for the display name in the vendor console; clearing the task creates anyway.

    :param file_name: The uploaded file's name, e.g. ``upload.output`` (templated).
    :param display_name: The job's display name (templated). Default: dag, task and run.
    """

    template_fields = ("file_name", "display_name", "endpoint", "maas_conn_id")
    operator_extra_links = (MaaSProgressLink(),)

    def __init__(self, *, file_name: str, display_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.file_name = file_name
        self.display_name = display_name

    def execute(self, context: Context) -> str:
        from airflow_provider_maas.batch.record.create_guard import (
            CreateInFlight,
            clear_epoch,
            refuse_uncertain_create,
            uncertain_create_error,
        )
        from airflow_provider_maas.client.failures import proves_not_created
        from airflow_provider_maas.client.naming import display_name

        what = f"file {self.file_name!r}"
        store = task_state(context)
        saved = store.get(JOB_STATE_KEY) if store is not None else None
        if (in_flight := CreateInFlight.from_stored(saved)) is not None:
            if in_flight.file_name == self.file_name:
                refuse_uncertain_create(in_flight, context, what=what)  # returns only if the task was cleared
            else:
                self.log.warning(
                    "An earlier try's create for another file (%r) got no answer; creating a job for %r",
                    in_flight.file_name,
                    self.file_name,
                )
        else:
            existing = reusable_job(self.hook, store, JOB_STATE_KEY, self.file_name, self.log)
            if existing:
                self._record_job_lineage(existing)
                return existing
        name = self.display_name or display_name(context)
        marker = CreateInFlight(self.file_name, name, clear_epoch(context))
        if store is not None:
            store.set(JOB_STATE_KEY, marker.as_dict())  # BEFORE sending: a retry must find it
        try:
            job = self.hook.create_batch_job(self.file_name, name)
            metrics.job_created(context)
        except (MaaSJobCreationUncertainError, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise  # the marker stays: a retry refuses too
        except BaseException as err:  # Airflow's AirflowTaskTimeout/AirflowTaskTerminated are BaseExceptions
            if not proves_not_created(err):
                raise uncertain_create_error(marker, what=what, cause=err) from err
            if store is not None:
                store.set(JOB_STATE_KEY, {"status": "not_created", "file_name": self.file_name})
            raise
        if store is not None:
            try:
                store.set(JOB_STATE_KEY, {"job_name": job["name"], "file_name": self.file_name})
            except BaseException:
                self.log.error("Job %s was created, but could not be recorded: a retry will refuse", job["name"])
                raise
        self._record_job_lineage(job["name"])
        self.log.info("Created job %s from %r (state %s)", job["name"], self.file_name, job.get("state"))
        return job["name"]

    def _record_job_lineage(self, job_name: str) -> None:
        config = self.hook.config
        self.record_lineage([ServiceDataset.file(config, self.file_name)], [ServiceDataset.results(config, job_name)])


class MaaSDownloadResultsOperator(FlagParameters, RenamedParameters, MaaSBaseOperator):
    """Stream a job's results to ``destination``, verified and atomically; returns its URI.

    Pushes an XCom ``summary``: requests, succeeded, failed, missing, duplicates, bytes, token
    totals, ``failed_uri``, and what the job's ``completionStats`` counted (``expected_requests``).
    Every difference between the results and the job's counts is in the summary and the log:
    requests the job counted without a result line are ``missing`` (and ``failed``); a line
    repeating an earlier one is counted in ``duplicates``, not as another request. Failed requests
    are written, ready to resubmit, to ``<destination stem>.failed.jsonl``. When an outlet is an
    ``Asset``, the summary is attached to its asset event.

    Without ``source`` the results keep the service's order and the failed file can only hold
    requests the results file names. With ``source`` (the requests file that was uploaded) the
    results are rewritten in input order and every failed or missing request goes to the failed
    file as its input line, as :class:`MaaSMergeResultsOperator` does.

    :param job_name: The job, e.g. ``wait.output["name"]`` or ``create.output`` (templated).
    :param destination: Local path, URI or ``ObjectStoragePath`` (templated; mapped tasks can use
        ``{{ ti.map_index }}``).
    :param source: The uploaded requests JSONL (path, URI or ``ObjectStoragePath``, templated), as
        the upload operator's ``source``: results in input order, missing requests in the failed
        file. Its old name ``requests`` is deprecated (it works with ``.partial()``/``.expand()`` too).
    :param allowed_prefix: If set, refuse destinations outside this prefix (templated).
    :param extract_images: Also write the inline images of image models (``inlineData`` parts) to
        files in ``<destination stem>_images/`` beside the results; their URIs go to XCom ``images``.
        A string is read as a flag (:func:`~airflow_provider_maas.flags.parameter_flag`).
    """

    template_fields = ("job_name", "destination", "source", "allowed_prefix", "endpoint", "maas_conn_id")
    RENAMED: ClassVar[dict[str, str]] = {"requests": "source"}
    FLAGS = ("extract_images",)

    def __init__(
        self,
        *,
        job_name: str,
        destination: Any,
        source: Any | None = None,
        allowed_prefix: Any | None = None,
        extract_images: bool | str = False,
        requests: Any | None = None,
        **kwargs: Any,
    ) -> None:
        source = renamed(requests, "requests", "source", source)
        super().__init__(**kwargs)
        self.job_name = job_name
        self.destination = destination
        self.source = source
        self.allowed_prefix = allowed_prefix
        self.extract_images = parameter_flag(extract_images, what="extract_images")

    def execute(self, context: Context) -> str:
        from airflow_provider_maas.batch.answers.merge import (
            compare_with_job,
            extract_images_beside,
            failed_path_for,
            merge_results,
            summarise_results,
        )
        from airflow_provider_maas.batch.record.origin import write_origin
        from airflow_provider_maas.storage import check_destination, check_within, filesystem_of, to_path, uri_of

        dest = check_destination(self.destination)
        check_within(dest, self.allowed_prefix, what="destination")
        ordered = self.source is not None
        if ordered:
            source = to_path(self.source, what="source")
            filesystem_of(source, what="source")
            if not source.is_file():
                raise MaaSInputError(f"The source {uri_of(source)!r} does not exist; give the uploaded requests file.")
        job = self.hook.get_batch_job(self.job_name)
        metadata = self.hook.download_results(self.job_name, dest)
        counted: ResultsSummary | MergeSummary
        if ordered:
            counted = merge_results([dest], self.source, dest)
        else:
            counted = summarise_results(dest, failed_destination=failed_path_for(dest))
            counted["bytes"] = int(metadata.get("size") or counted["bytes"])
        expected, differences = compare_with_job(counted, job, ordered=ordered)
        summary: DownloadSummary = {**counted, "expected_requests": expected, "job_name": self.job_name}
        if differences:
            self.log.warning(
                "The results of job %s differ from the job's completionStats: %s", self.job_name, "; ".join(differences)
            )
        if summary.get("missing") and not ordered:
            self.log.warning(
                "%d requests of job %s have no result line, so they are not in its failed file either: give "
                "the operator source= (the uploaded requests file) to have them written to %s",
                summary["missing"],
                self.job_name,
                uri_of(failed_path_for(dest)),
            )
        self.record_lineage(
            [ServiceDataset.results(self.hook.config, self.job_name), *([self.source] if ordered else [])],
            [dest, summary["failed_uri"]],
        )
        if self.extract_images:
            images = extract_images_beside(dest)
            summary["images"] = len(images)
            context["ti"].xcom_push(key="images", value=images)
        write_origin(dest, self.hook.config.endpoint)
        publish_summary(self, context, summary, uri_of(dest))
        return uri_of(dest)


class MaaSSplitRequestsOperator(FlagParameters, LineageMixin, BaseOperator):
    """Split a JSONL file of any size into files of consecutive requests; returns their URIs.

    By default each file fits one upload (shards for the upload, create, wait, download chain);
    with ``for_upload=False`` the files are chunks of any size, each for one mapped
    :class:`MaaSBatchPredictionOperator` (which splits its chunk again), e.g.
    ``max_requests_per_file=10_000``.

    Streams the input in constant memory and validates every line first: on a bad line
    nothing is written. Names are deterministic (``part-00000.jsonl``..., ``chunk-00000.jsonl``...
    for chunks), so a retry rewrites the same files. The returned list is ready for ``.expand()``.

    :param source: Local path, URI or ``ObjectStoragePath`` of the requests (templated).
    :param destination_prefix: Folder (path, URI or ``ObjectStoragePath``) for the files (templated).
    :param max_requests_per_file: At most this many requests per file (<= 100 with ``for_upload``).
    :param max_bytes_per_file: At most this many bytes per file (<= 50 MiB with ``for_upload``);
        None: 50 MiB with ``for_upload``, no limit for chunks.
    :param for_upload: True: each file fits one upload (100 requests, 50 MiB). False: chunks of any size.
        A string is read as a flag (:func:`~airflow_provider_maas.flags.parameter_flag`: ``"false"`` is false).
    """

    template_fields = ("source", "destination_prefix")
    FLAGS = ("for_upload",)

    def __init__(
        self,
        *,
        source: Any,
        destination_prefix: Any,
        max_requests_per_file: int = MAX_REQUESTS_PER_FILE,
        max_bytes_per_file: int | None = None,
        for_upload: bool | str = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.destination_prefix = destination_prefix
        self.max_requests_per_file = max_requests_per_file
        self.max_bytes_per_file = max_bytes_per_file
        self.for_upload = parameter_flag(for_upload, what="for_upload")
        # refused where the DAG is parsed, as the batch operator's (chunks: the lowest bounds only)
        check_shard_limits(
            max_requests_per_file,
            MAX_BYTES_PER_FILE if self.for_upload and max_bytes_per_file is None else max_bytes_per_file,
            upload=self.for_upload,
        )

    def execute(self, context: Context) -> list[str]:
        from airflow_provider_maas.batch.inputs.chunks import write_chunks
        from airflow_provider_maas.batch.inputs.shards import write_shards

        if self.for_upload:
            uris = write_shards(
                self.source,
                self.destination_prefix,
                max_requests=self.max_requests_per_file,
                max_bytes=MAX_BYTES_PER_FILE if self.max_bytes_per_file is None else self.max_bytes_per_file,
                log=self.log,
            )
        else:
            uris = write_chunks(
                self.source,
                self.destination_prefix,
                max_requests=self.max_requests_per_file,
                max_bytes=self.max_bytes_per_file,
                log=self.log,
            )
        self.record_lineage([self.source], [self.destination_prefix])  # the folder, not 1,000 shards
        return uris


class MaaSMergeResultsOperator(RenamedParameters, LineageMixin, BaseOperator):
    """Merge shard results into one file in the order of the original requests; returns its URI.

    Requests that failed or have no result go to ``<destination stem>.failed.jsonl`` (input
    format, ready to resubmit). XCom ``summary`` as the download operator's, plus ``missing``. No results
    files (an empty ``results``: a mapped upstream that produced none) are refused, nothing written.

    :param results: Result files of the shards, e.g. ``download.output`` (templated). Its old name
        ``sources`` is deprecated (it works with ``.partial()``/``.expand()`` too).
    :param source: The original requests JSONL, whose order the results are written in (path, URI
        or ``ObjectStoragePath``, templated), as the split operator's ``source``. Its old name
        ``requests`` is deprecated (likewise).
    :param destination: Where to write the merged results (templated).
    """

    template_fields = ("results", "source", "destination")
    RENAMED: ClassVar[dict[str, str]] = {"sources": "results", "requests": "source"}

    def __init__(
        self,
        *,
        destination: Any,
        results: Any | None = None,
        source: Any | None = None,
        sources: Any | None = None,
        requests: Any | None = None,
        **kwargs: Any,
    ) -> None:
        results = renamed(sources, "sources", "results", results)
        source = renamed(requests, "requests", "source", source)
        for name, value, what in (
            ("results", results, "the shards' result files"),
            ("source", source, "the original requests file"),
        ):
            if value is None:
                raise MaaSInputError(f"MaaSMergeResultsOperator needs {name}: {what}")
        super().__init__(**kwargs)
        self.results = results
        self.source = source
        self.destination = destination

    def execute(self, context: Context) -> str:
        from airflow_provider_maas.batch.answers.merge import merge_results
        from airflow_provider_maas.storage import check_destination, uri_of

        dest = check_destination(self.destination)
        sources = self.results
        if isinstance(sources, str) or not hasattr(sources, "__len__"):
            sources = [sources]
        sources = [sources[i] for i in range(len(sources))]  # index, so a lazy XCom list is not over-read
        summary = merge_results(sources, self.source, dest)
        self.record_lineage([*sources, self.source], [dest, summary["failed_uri"]])
        dest_uri = uri_of(dest)
        publish_summary(self, context, summary, dest_uri)
        return dest_uri
