"""One model in memory per weights: rerankers that differ only in how they score pairs, or in a device
named or left to choose, load the weights once; each still scores as if it had loaded them alone, and
the weights go once the last of them is closed or dropped."""

from __future__ import annotations

import gc
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bge_rerank_integrations import Reranker
from bge_rerank_integrations.backends.local import resolve_device

from .seams import cross_encoder
from .texts import PASSAGES, QUERIES

QUERY = QUERIES[0]
LONG = [" ".join(PASSAGES) * 3, *PASSAGES[:5]]  # one passage past every max_length below

# Two sets of scoring options, every one of them different.
FIRST: dict[str, Any] = {"max_length": 64, "max_batch_tokens": 300}
SECOND: dict[str, Any] = {
    "max_length": 128,
    "query_max_length": 40,
    "max_batch_tokens": 2000,
    "long_passages": "window",
    "window_overlap": 8,
    "max_windows": 3,
    "normalize": True,
    "batch_wait_ms": 1.0,
}


@pytest.fixture
def folder(model_dir: Path, tmp_path: Path) -> Path:
    """The test model under a name of its own, so no other test's reranker holds its weights."""
    own = tmp_path / "model"
    own.symlink_to(model_dir, target_is_directory=True)
    return own


def alone(folder: Path, **settings: Any) -> list[float]:
    """Scores of a reranker closed at once: its weights are freed before the next one loads."""
    with Reranker(folder, device="cpu", **settings) as rr:
        return rr.score(QUERY, LONG)


def weights_of(rr: Reranker) -> Any:
    """The loaded transformers model of ``rr`` (loading it), as the test of freeing needs a weakref to it."""
    rr.load()
    return cross_encoder(rr).module


def collected(ref: weakref.ref[Any]) -> bool:
    gc.collect()
    return ref() is None


def test_scoring_options_share_one_load_and_score_as_if_alone(folder: Path, loads: list[str]) -> None:
    first_alone = alone(folder, **FIRST)
    second_alone = alone(folder, **SECOND)
    assert loads == [str(folder)] * 2  # each alone loaded its own (the first was freed on close)
    first = Reranker(folder, device="cpu", **FIRST)
    second = Reranker(folder, device="cpu", **SECOND)
    assert weights_of(first) is weights_of(second)
    assert len(loads) == 3  # one more load for the two of them
    assert first.score(QUERY, LONG) == first_alone
    assert second.score(QUERY, LONG) == second_alone
    assert first_alone != second_alone  # the options really score differently
    first.close()
    second.close()


def test_device_none_and_the_device_it_resolves_to_share_one_load(folder: Path, loads: list[str]) -> None:
    resolved = str(resolve_device(None))  # "cpu" here; the same GPU where there is one
    chosen, named = Reranker(folder), Reranker(folder, device=resolved)
    assert weights_of(chosen) is weights_of(named)
    assert loads == [str(folder)]
    assert chosen.score(QUERY, PASSAGES) == named.score(QUERY, PASSAGES)
    shared_chosen, shared_named = Reranker.shared(folder), Reranker.shared(folder, device=resolved)
    assert shared_chosen is not shared_named  # two shared instances (settings compared as given) ...
    assert weights_of(shared_chosen) is weights_of(chosen)  # ... on the same weights
    assert loads == [str(folder)]
    for rr in (chosen, named, shared_chosen, shared_named):
        rr.close()


@pytest.mark.parametrize(
    ("other", "reason"),
    [({"dtype": "bfloat16"}, "another dtype"), ({"model": "copy"}, "another folder")],
)
def test_other_weights_load_again(
    folder: Path, tmp_path: Path, loads: list[str], other: dict[str, Any], reason: str
) -> None:
    settings = dict(other)
    if settings.get("model") == "copy":
        settings["model"] = tmp_path / "copy"
        settings["model"].symlink_to(folder.resolve(), target_is_directory=True)
    base = Reranker(folder, device="cpu")
    different = Reranker(**{"model": folder, "device": "cpu", **settings})
    assert weights_of(base) is not weights_of(different), reason
    assert len(loads) == 2
    base.close()
    different.close()


def test_closing_one_user_leaves_the_other_scoring_and_the_last_frees_the_weights(
    folder: Path, loads: list[str]
) -> None:
    expected = alone(folder, **FIRST)
    first = Reranker(folder, device="cpu", **FIRST)
    second = Reranker(folder, device="cpu", **SECOND)
    model = weakref.ref(weights_of(first))
    assert weights_of(second) is model()
    second.close()
    assert not second.is_loaded
    assert not collected(model)  # the first still uses them
    assert first.score(QUERY, LONG) == expected
    first.close()
    assert collected(model)
    third = Reranker(folder, device="cpu", **FIRST)  # loads anew, and scores the same
    assert third.score(QUERY, LONG) == expected
    assert len(loads) == 3


def test_dropped_users_free_the_weights(folder: Path) -> None:
    first = Reranker(folder, device="cpu", **FIRST)
    second = Reranker(folder, device="cpu", **SECOND)
    first.score(QUERY, PASSAGES)
    second.score(QUERY, PASSAGES)
    model = weakref.ref(weights_of(first))
    del first
    assert not collected(model)
    del second
    assert collected(model)


def test_concurrent_calls_on_shared_weights_get_exact_scores(folder: Path) -> None:
    calls = [(i % 2, PASSAGES[i % 7 : i % 7 + 6] + LONG[:1]) for i in range(24)]
    expected = [alone(folder, **FIRST), alone(folder, **SECOND)]
    rerankers = [Reranker(folder, device="cpu", **FIRST), Reranker(folder, device="cpu", **SECOND)]
    assert weights_of(rerankers[0]) is weights_of(rerankers[1])
    solo = {(which, tuple(p)): rerankers[which].score(QUERY, p) for which, p in calls}  # one at a time

    def call(which: int, passages: list[str]) -> list[float]:
        return rerankers[which].score(QUERY, passages)

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(call, which, passages) for which, passages in calls]
        results = [f.result(timeout=120) for f in futures]
    for (which, passages), result in zip(calls, results, strict=True):
        assert result == pytest.approx(solo[which, tuple(passages)], abs=1e-5)
    assert [rr.score(QUERY, LONG) for rr in rerankers] == expected
    for rr in rerankers:
        rr.close()


def test_a_max_length_beyond_the_model_is_refused_on_shared_weights_too(
    folder: Path, loads: list[str]
) -> None:
    loaded = Reranker(folder, device="cpu").load()
    expected = loaded.score(QUERY, PASSAGES)
    with pytest.raises(ValueError, match="max_length=9000 exceeds the model's limit of 8192 tokens"):
        Reranker(folder, device="cpu", max_length=9000).load()
    assert loads == [str(folder)]  # refused without loading anything
    assert loaded.score(QUERY, PASSAGES) == expected
    loaded.close()


def test_rerankers_loading_at_once_load_the_weights_once(folder: Path, loads: list[str]) -> None:
    rerankers = [Reranker(folder, device="cpu", max_length=64 + 16 * i) for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        models = list(pool.map(weights_of, rerankers))
    assert loads == [str(folder)]
    assert all(model is models[0] for model in models)
    for rr in rerankers:
        rr.close()
