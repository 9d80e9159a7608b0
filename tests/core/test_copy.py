"""Copying and pickling a ``Reranker`` carries its settings, never its model or threads.

A copy of a shared reranker is the receiving process's shared one for those settings; a copy of an
unshared one is a new unshared one. Nothing loads until the copy is used.
"""

from __future__ import annotations

import copy
import multiprocessing
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from bge_rerank_integrations import Reranker, RerankerConfig, RerankResult
from bge_rerank_integrations.config import ScoringOptions
from bge_rerank_integrations.reranker import sigmoid

from .texts import PASSAGES, QUERIES

QUERY = QUERIES[0]

COPIES: dict[str, Callable[[Reranker], Reranker]] = {
    "deepcopy": copy.deepcopy,
    "copy": copy.copy,
    "pickle": lambda rr: pickle.loads(pickle.dumps(rr)),
}


@pytest.mark.parametrize("how", list(COPIES))
def test_a_copy_of_an_unshared_reranker_is_a_new_one_with_the_same_settings(
    model_dir: Path, how: str
) -> None:
    original = Reranker(model_dir, device="cpu", max_length=100)
    expected = original.score(QUERY, PASSAGES[:5])
    copied = COPIES[how](original)
    assert copied is not original
    assert copied.config == original.config
    assert not copied.is_loaded  # the settings travelled, not the weights
    assert copied.score(QUERY, PASSAGES[:5]) == pytest.approx(expected, abs=1e-6)
    copied.close()
    assert original.score(QUERY, PASSAGES[:5]) == expected  # the original is its own
    original.close()


@pytest.mark.parametrize("how", list(COPIES))
def test_a_copy_of_a_shared_reranker_is_this_processs_shared_one(model_dir: Path, how: str) -> None:
    shared = Reranker.shared(model_dir, device="cpu", max_length=104)
    copied = COPIES[how](shared)
    assert copied is shared
    copied.close()  # the copy took a hold of its own: giving it back leaves the original's
    assert not shared.is_closed
    shared.close()
    assert shared.is_closed


def test_a_copy_of_a_closed_reranker_is_a_new_open_one(model_dir: Path) -> None:
    closed = Reranker(model_dir, device="cpu")
    closed.close()
    copied = copy.deepcopy(closed)
    assert not copied.is_closed
    assert len(copied.score(QUERY, PASSAGES[:2])) == 2
    copied.close()


class LengthBackend:
    """A custom engine: a plain, picklable object scoring a pair by its lengths."""

    is_loaded = True
    pass_tokens = 2048

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass

    def score_pairs(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> list[float]:
        return [float(len(q) - len(p)) for q, p in pairs]


def test_a_reranker_on_given_backends_scores_with_them_and_copies_them() -> None:
    backend = LengthBackend()
    rr = Reranker.from_config(RerankerConfig(normalize=True), backends=[backend])
    copied = copy.deepcopy(rr)
    for each in (rr, copied):
        assert each.score("abc", ["a", "abcde"], normalize=False) == [2.0, -2.0]
        assert each.rank("abc", ["abcde", "a"], normalize=False) == [
            RerankResult(1, 2.0),
            RerankResult(0, -2.0),
        ]
    assert rr.score("abc", ["a"]) == [sigmoid(2.0)]  # the config still sets the rest
    with pytest.raises(ValueError, match="at least one backend"):
        Reranker.from_config(RerankerConfig(), backends=[])


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])  # a shallow copy shares what it was given
def test_a_reranker_on_given_local_backends_or_engine_copies_with_nothing_loaded(
    model_dir: Path, how: str
) -> None:
    from bge_rerank_integrations.backends.local import LocalBackend
    from bge_rerank_integrations.backends.queued import QueuedEngine

    config = RerankerConfig(model=str(model_dir), device="cpu")
    padded = LocalBackend(config, padding_free=False)
    rerankers = [
        Reranker.from_config(config, backends=[padded]),
        Reranker.from_config(config, engine=QueuedEngine([padded, padded], batch_wait_ms=2.0)),
    ]
    for rr in rerankers:
        expected = rr.score(QUERY, PASSAGES[:6])
        copied = COPIES[how](rr)
        assert copied is not rr
        assert not copied.is_loaded  # settings travel, never weights, threads or locks
        assert copied.score(QUERY, PASSAGES[:6]) == pytest.approx(expected, abs=1e-6)
        assert copied.stats.computed_tokens > copied.stats.real_tokens  # still the padded forward
        copied.close()
        assert rr.score(QUERY, PASSAGES[:6]) == pytest.approx(expected, abs=1e-6)  # the original lives on
        rr.close()


# --- across processes --------------------------------------------------------------------------


def _score_in_child(rr: Reranker, passages: list[str]) -> tuple[bool, bool, list[float]]:
    """In a fresh process: was anything loaded by unpickling, is it the shared one, and its scores."""
    loaded = rr.is_loaded
    shared = rr is Reranker.shared_from_config(rr.config)
    return loaded, shared, rr.score(QUERY, passages)


def test_a_pickled_reranker_scores_the_same_in_a_spawned_process(model_dir: Path) -> None:
    unshared = Reranker(model_dir, device="cpu").load()
    shared = Reranker.shared(model_dir, device="cpu", max_length=108).load()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        from_unshared = pool.submit(_score_in_child, unshared, PASSAGES[:6]).result(timeout=300)
        from_shared = pool.submit(_score_in_child, shared, PASSAGES[:6]).result(timeout=300)
    assert from_unshared[:2] == (False, False)  # nothing loaded on unpickling; a new unshared one
    assert from_unshared[2] == pytest.approx(unshared.score(QUERY, PASSAGES[:6]), abs=1e-6)
    assert from_shared[:2] == (False, True)  # the child's own shared instance for these settings
    assert from_shared[2] == pytest.approx(shared.score(QUERY, PASSAGES[:6]), abs=1e-6)
    unshared.close()
    shared.close()
