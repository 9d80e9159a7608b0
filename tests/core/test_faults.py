"""Local faults in the middle of a shared batch fail only the requests they belong to, and the queue
serves the next calls: out of memory, NaN, tokenizer errors (a Rust panic too) and interrupts.

The faults come through the public seam ``Reranker.from_config(config, backends=[...])``: the real
local backend, wrapped to fail on chosen passages the way a broken device, model or tokenizer does.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from bge_rerank_integrations import Reranker, RerankerConfig, RerankError
from bge_rerank_integrations.backends.local import LocalBackend
from bge_rerank_integrations.config import ScoringOptions

from .texts import PASSAGES, QUERIES

QUERY = QUERIES[0]
GATE = "the gate: this batch waits until the test opens it"
POISON = "the poisoned passage"


class Panic(BaseException):
    """Like pyo3's ``PanicException`` (a Rust panic inside ``tokenizers``): not an ``Exception``."""


class FaultyBackend:
    """The real local backend, except on :data:`POISON` (fails) and :data:`GATE` (waits to be let through)."""

    def __init__(self, inner: LocalBackend, fault: Callable[[], BaseException] | None) -> None:
        """``fault`` makes the exception to raise; ``None`` gives the poisoned pair a NaN logit."""
        self.inner = inner
        self.fault = fault
        self.batches: list[list[tuple[str, str]]] = []
        self.at_gate = threading.Event()
        self.gate = threading.Event()

    @property
    def is_loaded(self) -> bool:
        return self.inner.is_loaded

    @property
    def pass_tokens(self) -> int:
        return self.inner.pass_tokens

    def load(self) -> None:
        self.inner.load()

    def close(self) -> None:
        self.inner.close()

    def score_pairs(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> list[float]:
        self.batches.append(list(pairs))
        passages = [p for _, p in pairs]
        if GATE in passages:
            self.at_gate.set()
            assert self.gate.wait(60)
        if POISON in passages and self.fault is not None:
            raise self.fault()
        scores = self.inner.score_pairs(pairs, options)
        return [math.nan if p == POISON else s for p, s in zip(passages, scores, strict=True)]


class Caller(threading.Thread):
    """A thread making one ``score`` call and keeping what came of it, whatever it is."""

    def __init__(self, rr: Reranker, passages: list[str]) -> None:
        super().__init__(daemon=True)
        self.rr, self.passages = rr, passages
        self.scores: list[float] | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.scores = self.rr.score(QUERY, self.passages)
        except BaseException as exc:
            self.error = exc


def _waiting_for_its_result(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked in ``Future.result``: its request is queued."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "result" and code.co_filename.endswith(
            os.path.join("concurrent", "futures", "_base.py")
        ):
            return True
        frame = frame.f_back
    return False


def _wait_until_queued(threads: Sequence[threading.Thread]) -> None:
    deadline = time.monotonic() + 60
    while not all(_waiting_for_its_result(t) for t in threads):
        assert time.monotonic() < deadline, "the calls never reached the queue"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def config(model_dir: Path) -> RerankerConfig:
    return RerankerConfig(model=str(model_dir), device="cpu", max_length=128)


@pytest.fixture(scope="module")
def reference(config: RerankerConfig) -> Reranker:
    return Reranker.from_config(config)


def _faulty(
    config: RerankerConfig, fault: Callable[[], BaseException] | None
) -> tuple[Reranker, FaultyBackend]:
    backend = FaultyBackend(LocalBackend(config), fault)
    return Reranker.from_config(config, backends=[backend]), backend


FAULTS: dict[str, tuple[Callable[[], BaseException] | None, type[BaseException], str]] = {
    "out of memory": (
        lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        torch.OutOfMemoryError,
        "out of memory",
    ),
    "NaN": (None, RerankError, "returned NaN for 1 of 2 pairs"),
    "tokenizer error": (lambda: Exception("Truncation error: sequence too short"), Exception, "Truncation"),
    "tokenizer panic": (lambda: Panic("index out of bounds"), Panic, "index out of bounds"),
    "KeyboardInterrupt": (KeyboardInterrupt, KeyboardInterrupt, ""),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_fault_in_a_shared_batch_fails_only_its_request(
    config: RerankerConfig, reference: Reranker, name: str
) -> None:
    fault, error, message = FAULTS[name]
    rr, backend = _faulty(config, fault)
    rr.load()
    blocker = Caller(rr, [GATE])
    assert backend.at_gate.wait(60)
    good = [Caller(rr, PASSAGES[i : i + 2]) for i in range(0, 8, 2)]
    poisoned = Caller(rr, [PASSAGES[9], POISON])
    _wait_until_queued([*good, poisoned])
    backend.gate.set()
    for caller in [blocker, *good, poisoned]:
        caller.join(60)
    assert not any(c.is_alive() for c in [blocker, *good, poisoned]), "a call hung"

    shared = backend.batches[1]  # every request queued behind the gate, in one batch
    assert len(shared) == 2 * len(good) + 2
    assert isinstance(poisoned.error, error)
    assert message in str(poisoned.error)
    for caller in good:
        assert caller.error is None
        assert caller.scores == pytest.approx(reference.score(QUERY, caller.passages), abs=1e-5)
    assert blocker.error is None
    # the queue goes on serving, with shared batches again
    assert rr.score(QUERY, PASSAGES[:5]) == pytest.approx(reference.score(QUERY, PASSAGES[:5]), abs=1e-5)
    rr.close()


def test_ctrl_c_while_waiting_reaches_that_caller_and_drops_its_request(
    config: RerankerConfig, reference: Reranker
) -> None:
    rr, backend = _faulty(config, None)
    blocker = Caller(rr, [GATE])
    assert backend.at_gate.wait(60)
    main = threading.main_thread()
    assert threading.current_thread() is main  # only the main thread receives SIGINT

    def press_ctrl_c_once_waiting() -> None:
        deadline = time.monotonic() + 60
        while not _waiting_for_its_result(main) and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_kill(main.ident or 0, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=press_ctrl_c_once_waiting, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            rr.score(QUERY, ["interrupted while queued"])
    finally:
        signal.signal(signal.SIGINT, previous)
    others = [Caller(rr, PASSAGES[:3]), Caller(rr, PASSAGES[3:5])]
    _wait_until_queued(others)
    backend.gate.set()
    for caller in [blocker, *others]:
        caller.join(60)
    assert blocker.error is None
    for caller in others:
        assert caller.scores == pytest.approx(reference.score(QUERY, caller.passages), abs=1e-5)
    scored = {p for batch in backend.batches for _, p in batch}
    assert "interrupted while queued" not in scored  # its batch had not started: it was dropped
    rr.close()
