"""A thread that hands its work to the engine's worker frees its OpenMP helper threads."""

import os
import sys
import threading

import pytest
import torch

from diffuspec.openmp import release_idle_threads


def threads_alive() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts the process's threads in /proc")
@pytest.mark.skipif(torch.get_num_threads() < 2, reason="one torch thread runs no parallel region: no helpers")
def test_release_frees_the_calling_threads_helpers_and_torch_still_works():
    def run_parallel() -> None:
        x = torch.randn(512, 512)
        _ = x @ x

    result: dict = {}

    def in_a_fresh_thread() -> None:  # a thread of its own, so the count below is its team alone
        run_parallel()
        before = threads_alive()
        result["released"] = release_idle_threads()
        result["freed"] = before - threads_alive()
        run_parallel()  # a new team, as needed

    worker = threading.Thread(target=in_a_fresh_thread)
    worker.start()
    worker.join()
    assert result["released"]
    assert result["freed"] >= 1


def test_submitting_a_request_releases_the_submitters_helpers(monkeypatch, targets, drafter, tokenizer):
    from diffuspec import DiffuSpec, scheduler

    calls = []
    monkeypatch.setattr(scheduler, "release_idle_threads", lambda: calls.append(threading.current_thread()))
    DiffuSpec(targets["llama"], drafter, tokenizer).generate("the cat", max_new_tokens=3)
    assert calls == [threading.current_thread()]
