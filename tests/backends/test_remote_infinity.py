"""The remote backend against a real serving engine: Infinity (infinity-emb) on loopback, serving the
tiny random test model on the CPU, compared with the local backend on the same weights.

The server is started from the venv named by ``BGE_INFINITY_VENV`` (see ``infinity_server.py``);
without it these tests are skipped locally and fail in CI.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from bge_rerank_integrations import RemoteBackendError, Reranker
from tests.backends.infinity_server import InfinityServer
from tests.core.texts import LONG_PASSAGE, PASSAGES, QUERIES

pytestmark = pytest.mark.slow

KEY_VARIABLE = "BGE_TEST_INFINITY_KEY"
API_KEY = "infinity-test-key-0c5e2d"

# Infinity strips leading and trailing whitespace and truncates ``longest_first``, where the local
# backend keeps whitespace and follows FlagReranker's rules: compare on texts that neither touches.
COMPARED_QUERIES = [q for q in QUERIES if q and q == q.strip()]
COMPARED_PASSAGES = [p for p in PASSAGES if p and p == p.strip()]

# Both sides run the same weights in float32, through different libraries (Infinity: transformers 4.57
# and sentence-transformers; here: transformers 5) and kernels, so they round differently. Measured on
# these pairs over repeated runs: up to 1.7e-5 between the two, on logits from -1.9 to 2.7, as large
# between two unpadded single-pair passes as between batches (GUIDE section 6 saw 5e-6 once), so it
# is rounding, not batching. The random test model's large weights (initializer_range 0.3) amplify
# it. 1e-4 leaves a margin of 6, and is far below what a real fault would show: a sigmoid applied
# moves scores by 0.3 or more, and results mapped to the wrong index by at least the gap between two
# scores of one query (9e-3 at the closest here). The sigmoid's slope (at most 1/4) keeps the
# probabilities inside the same bound.
TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def infinity_url(
    infinity_executable: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Root URL of an Infinity server on 127.0.0.1 serving the test model; stopped after the session."""
    log_path = tmp_path_factory.mktemp("infinity") / "server.log"
    server = InfinityServer(infinity_executable, model_dir, log_path, api_key=API_KEY)
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def remote(infinity_url: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Reranker:
    """A reranker on the Infinity server, with the API key in the environment; small concurrent requests."""
    monkeypatch.setenv(KEY_VARIABLE, API_KEY)
    return Reranker(
        model_dir,
        backend="infinity",
        base_url=infinity_url,
        api_key_env=KEY_VARIABLE,
        max_texts_per_request=4,
        max_concurrent_requests=3,
        request_timeout=30.0,
    )


@pytest.fixture(scope="session")
def local(model_dir: Path) -> Reranker:
    """The local backend on the same weights."""
    return Reranker(model_dir, device="cpu")


def test_scores_match_the_local_backend_raw_and_normalized(remote: Reranker, local: Reranker) -> None:
    # Several queries in one call, chunked into requests of 4 and sent 3 at a time.
    pairs = [(q, p) for q in COMPARED_QUERIES for p in COMPARED_PASSAGES]
    assert len(pairs) > 30
    remote_raw = remote.score_pairs(pairs)
    local_raw = local.score_pairs(pairs)
    worst = max(abs(a - b) for a, b in zip(remote_raw, local_raw, strict=True))
    assert worst <= TOLERANCE, f"largest difference {worst:.2e}"
    assert remote.score_pairs(pairs, normalize=True) == pytest.approx(
        local.score_pairs(pairs, normalize=True), abs=TOLERANCE
    )
    assert len(set(local_raw)) > len(pairs) // 2  # the random model does tell pairs apart


def test_rank_matches_the_local_backend(remote: Reranker, local: Reranker) -> None:
    for query in COMPARED_QUERIES:
        remote_ranked = remote.rank(query, COMPARED_PASSAGES)
        local_ranked = local.rank(query, COMPARED_PASSAGES)
        assert [r.score for r in remote_ranked] == pytest.approx(
            [r.score for r in local_ranked], abs=TOLERANCE
        )
        # Same order, except between scores closer than the tolerance.
        local_score = {r.index: r.score for r in local_ranked}
        reordered = [local_score[r.index] for r in remote_ranked]
        assert all(a >= b - 2 * TOLERANCE for a, b in itertools.pairwise(reordered))


def test_over_long_passages_are_cut_by_the_server(remote: Reranker) -> None:
    (score,) = remote.score("what is the capital of France", [LONG_PASSAGE])
    assert math.isfinite(score)


def test_a_wrong_key_is_a_clear_error_that_hides_the_key(
    infinity_url: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "not-the-key-8d1f"
    monkeypatch.setenv(KEY_VARIABLE, wrong)
    reranker = Reranker(model_dir, backend="infinity", base_url=infinity_url, api_key_env=KEY_VARIABLE)
    with pytest.raises(RemoteBackendError, match=rf"check the API key in \${KEY_VARIABLE}") as info:
        reranker.score("q", ["a"])
    assert info.value.status == 401
    assert wrong not in str(info.value)
    assert wrong not in repr(reranker)
