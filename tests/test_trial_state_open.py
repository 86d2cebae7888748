"""Adversarial trial of issue 19, third pass: what was still open after the first two trials.

Every test counts the jobs an independent stub of the four documented calls created
(:mod:`tests.counting_service`): that is what was paid. Tries are staged as in
``tests/test_state_fail_closed.py``: the same ``max_tries`` is an automatic retry, a higher one a clear.
"""

from __future__ import annotations

import threading

import pytest

from tests.counting_service import counting_service
from tests.helpers import FakeStateStore, assert_in_input_order, batch_operator, make_context, write_requests


def _try(store=None, max_tries=1, **ti):
    context = make_context(store, **ti)
    context["ti"].max_tries = max_tries
    return context


def _echo(request):
    """An answer quoting the prompt (``assert_in_input_order`` checks it)."""
    text = request["contents"][0]["parts"][0]["text"]
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": f"answer to {text}"}]}}]}


@pytest.fixture
def service(monkeypatch):
    with counting_service(monkeypatch, respond=_echo, job_duration=0.3) as served:
        yield served


# 4 (variation): a zombie finishes the batch while its retry starts
@pytest.mark.parametrize("removed", ["whole", "half"])
def test_4_a_retry_starting_while_the_zombie_removes_the_finished_state_pays_nothing_again(
    service, tmp_path, monkeypatch, removed
):
    # Try 1 (declared a zombie, still running) is writing the results when its retry starts. The retry
    # checks "finished?" (not yet), then the zombie marks the pointer finished and removes the state,
    # then the retry reads the state: none, and the pointer says "finished", so it planned the batch
    # again and paid for every shard a second time. Half removed (the retry reads while the zombie
    # deletes), it stopped on a damaged state, and the clear it asked for paid again.
    import shutil

    from airflow_provider_maas.batch import resume
    from airflow_provider_maas.batch.journal import BatchJournal
    from airflow_provider_maas.operators import _batch

    if removed == "half":
        remove = BatchJournal.remove

        def half(self, *, keep=()):
            if keep:
                return remove(self, keep=keep)
            shutil.rmtree(str(self.root.path) + "/journal")
            raise PermissionError(13, "Permission denied", str(self.root))

        monkeypatch.setattr(BatchJournal, "remove", half)

    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    store = FakeStateStore()
    writing, retry_started, zombie_done = threading.Event(), threading.Event(), threading.Event()
    write_outputs, take_lease = _batch.write_outputs, resume.take_lease

    def zombie_writes_slowly(*args, **kwargs):
        if threading.current_thread().name == "zombie":
            writing.set()
            retry_started.wait(30)  # the retry has found the batch unfinished
        return write_outputs(*args, **kwargs)

    def retry_takes_lease(journal, lease):
        if threading.current_thread().name != "zombie":
            retry_started.set()
            zombie_done.wait(30)  # meanwhile the zombie finished: pointer 'finished', state removed
        return take_lease(journal, lease)

    monkeypatch.setattr(_batch, "write_outputs", zombie_writes_slowly)
    monkeypatch.setattr(resume, "take_lease", retry_takes_lease)
    errors: list[BaseException] = []

    def zombie():
        try:
            batch_operator(source, dest).execute(_try(store))
        except BaseException as err:  # pragma: no cover - shown by the assertion below
            errors.append(err)
        zombie_done.set()

    thread = threading.Thread(target=zombie, name="zombie")
    thread.start()
    assert writing.wait(30)
    assert service.created == 3
    context = _try(store)  # the automatic retry, same clear round
    try:
        result = batch_operator(source, dest).execute(context)
    finally:
        thread.join(30)
    assert not errors, errors
    assert service.created == 3, "the retry paid for the finished batch again"
    assert result == f"file://{dest}"
    assert_in_input_order(source, dest)
