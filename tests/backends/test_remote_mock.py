"""The remote backend against in-process fake engines (httpx.MockTransport): each dialect's request and
reply, mapping by index, batching, concurrency, retries, errors and credentials.

The real-server check is ``test_remote_infinity.py``; these add what a real server cannot be made to
do on demand (429, 413, timeouts, malformed replies).
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from bge_rerank_integrations import RemoteBackendError, Reranker, RerankerConfig
from bge_rerank_integrations.backends.remote import RemoteEngine, RetryPolicy
from bge_rerank_integrations.config import BackendName
from bge_rerank_integrations.reranker import sigmoid

ENGINES = ("tei", "vllm", "infinity", "cohere")
BASE_URL = "http://127.0.0.1:9"  # never contacted: the mock transport answers
SECRET = "sk-test-5f3a9c1e7b"

Step = Callable[[httpx.Request], httpx.Response]


def true_logit(query: str, text: str) -> float:
    """The fake model: a deterministic logit in [-10, 10] per pair."""
    return (zlib.crc32(f"{query}\x00{text}".encode()) % 2001 - 1000) / 100


def status(code: int, body: Any = None, **headers: str) -> Step:
    """A scripted reply with this status (and JSON body, headers)."""
    return lambda request: httpx.Response(code, json=body or {"error": f"status {code}"}, headers=headers)


def raises(exc_type: type[httpx.RequestError]) -> Step:
    """A scripted transport failure (timeout, refused connection)."""

    def step(request: httpx.Request) -> httpx.Response:
        raise exc_type("scripted failure", request=request)

    return step


class FakeEngine:
    """One serving engine in-process: answers its dialect's ``/rerank`` with shuffled results.

    Scripted steps answer the first requests; later ones get a correct reply. Raw scores are returned
    only when asked for (TEI, Infinity), otherwise the sigmoid, as the real engines do.
    """

    def __init__(self, engine: BackendName, *script: Step, delay: float = 0.0) -> None:
        self.engine = engine
        self.script = list(script)
        self.delay = delay
        self.requests: list[httpx.Request] = []
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append(request)
            body = json.loads(request.content)
            self.bodies.append(body)
            step = self.script.pop(0) if self.script else None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            seed = len(self.bodies)
        try:
            if self.delay:
                time.sleep(self.delay)
            return step(request) if step is not None else self.reply(body, seed)
        finally:
            with self._lock:
                self.in_flight -= 1

    def reply(self, body: dict[str, Any], seed: int) -> httpx.Response:
        texts = body["texts"] if self.engine == "tei" else body["documents"]
        assert texts, "an empty request was sent"
        logits = [true_logit(body["query"], t) for t in texts]
        if not body.get("raw_scores", False):
            logits = [sigmoid(x) for x in logits]
        order = random.Random(seed).sample(range(len(texts)), len(texts))
        if self.engine == "tei":
            return httpx.Response(200, json=[{"index": i, "score": logits[i]} for i in order])
        results = [{"index": i, "relevance_score": logits[i]} for i in order]
        return httpx.Response(200, json={"id": "x", "results": results, "usage": {"total_tokens": 1}})

    @property
    def texts_per_request(self) -> list[int]:
        return [len(b["texts"] if self.engine == "tei" else b["documents"]) for b in self.bodies]


def make_engine(
    engine: BackendName,
    fake: Callable[[httpx.Request], httpx.Response],
    *,
    sleeps: list[float] | None = None,
    **settings: Any,
) -> RemoteEngine:
    """A RemoteEngine whose sync and async requests go to ``fake``; retry waits are recorded in
    ``sleeps``, not slept."""
    settings.setdefault("base_url", BASE_URL)
    config = RerankerConfig(model="test-model", backend=engine, **settings)
    record = sleeps.append if sleeps is not None else (lambda _: None)
    transport = httpx.MockTransport(fake)  # a sync and an async transport at once
    return RemoteEngine(
        config, transport=transport, async_transport=transport, retry=RetryPolicy(sleep=record)
    )


def reranker_on(
    fake: Callable[[httpx.Request], httpx.Response], model: str = "any", **settings: Any
) -> Reranker:
    """A Reranker whose remote engine talks to ``fake`` through the public transport seams."""
    config = RerankerConfig(model=model, **settings)
    transport = httpx.MockTransport(fake)
    engine = RemoteEngine(config, transport=transport, async_transport=transport)
    return Reranker.from_config(config, engine=engine)


TEXTS = [f"passage number {i} about pandas" for i in range(20)]


@pytest.mark.parametrize(
    ("engine", "path", "expected"),
    [
        (
            "tei",
            "/rerank",
            {"query": "q", "texts": ["a", "b"], "truncate": True, "raw_scores": True, "return_text": False},
        ),
        ("vllm", "/rerank", {"model": "test-model", "query": "q", "documents": ["a", "b"]}),
        (
            "infinity",
            "/rerank",
            {
                "model": "test-model",
                "query": "q",
                "documents": ["a", "b"],
                "raw_scores": True,
                "return_documents": False,
            },
        ),
        ("cohere", "/v2/rerank", {"model": "test-model", "query": "q", "documents": ["a", "b"]}),
    ],
)
def test_request_shape(engine: BackendName, path: str, expected: dict[str, Any]) -> None:
    fake = FakeEngine(engine)
    make_engine(engine, fake, base_url=BASE_URL + "/").score([("q", "a"), ("q", "b")])
    (request,) = fake.requests
    assert request.method == "POST"
    assert str(request.url) == BASE_URL + path
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    assert fake.bodies == [expected]


@pytest.mark.parametrize("engine", ENGINES)
def test_shuffled_results_come_back_in_input_order_as_raw_logits(engine: BackendName) -> None:
    fake = FakeEngine(engine)
    scores = make_engine(engine, fake).score([("what is a panda?", t) for t in TEXTS])
    expected = [true_logit("what is a panda?", t) for t in TEXTS]
    # TEI and Infinity send raw logits; vLLM and Cohere send sigmoids that are turned back.
    assert scores == pytest.approx(expected, abs=1e-9)
    assert all(type(s) is float for s in scores)


def test_tei_chunks_at_32_texts_in_near_equal_requests() -> None:
    fake = FakeEngine("tei")
    backend = make_engine("tei", fake)
    texts = [f"text {i}" for i in range(70)]
    assert backend.score([("q", t) for t in texts]) == [true_logit("q", t) for t in texts]
    assert sorted(fake.texts_per_request) == [23, 23, 24]
    assert sorted(t for b in fake.bodies for t in b["texts"]) == sorted(texts)  # each text sent once

    fake = FakeEngine("tei")
    make_engine("tei", fake).score([("q", t) for t in texts[:32]])
    assert fake.texts_per_request == [32]


@pytest.mark.parametrize("engine", ENGINES)
def test_max_texts_per_request_overrides_the_engine_default(engine: BackendName) -> None:
    fake = FakeEngine(engine)
    scores = make_engine(engine, fake, max_texts_per_request=3).score([("q", t) for t in TEXTS])
    assert scores == pytest.approx([true_logit("q", t) for t in TEXTS], abs=1e-9)
    assert sorted(fake.texts_per_request) == [2, 3, 3, 3, 3, 3, 3]


@pytest.mark.parametrize("engine", ENGINES)
def test_several_queries_in_one_call_get_one_request_per_query_chunk(engine: BackendName) -> None:
    queries = ["panda", "capital of France", "boiling water"]
    rng = random.Random(0)
    pairs = [(rng.choice(queries), t) for t in TEXTS * 3]
    fake = FakeEngine(engine)
    scores = make_engine(engine, fake, max_texts_per_request=10).score(pairs)
    assert scores == pytest.approx([true_logit(q, t) for q, t in pairs], abs=1e-9)
    sent = {
        q: sum(n for b, n in zip(fake.bodies, fake.texts_per_request, strict=True) if b["query"] == q)
        for q in queries
    }
    assert sent == {q: sum(1 for p in pairs if p[0] == q) for q in queries}
    assert all(n <= 10 for n in fake.texts_per_request)


@pytest.mark.parametrize("bound", [1, 3])
def test_concurrent_requests_are_bounded(bound: int) -> None:
    fake = FakeEngine("infinity", delay=0.05)
    backend = make_engine("infinity", fake, max_texts_per_request=1, max_concurrent_requests=bound)
    scores = backend.score([("q", t) for t in TEXTS[:12]])
    assert scores == [true_logit("q", t) for t in TEXTS[:12]]
    assert len(fake.requests) == 12
    assert fake.max_in_flight <= bound
    if bound > 1:
        assert fake.max_in_flight > 1  # requests did overlap


def test_429_with_retry_after_then_503_then_success() -> None:
    sleeps: list[float] = []
    fake = FakeEngine("tei", status(429, **{"Retry-After": "7"}), status(503))
    scores = make_engine("tei", fake, sleeps=sleeps).score([("q", "a"), ("q", "b")])
    assert scores == [true_logit("q", "a"), true_logit("q", "b")]
    assert len(fake.requests) == 3
    assert sleeps[0] == 7.0  # the server's Retry-After
    assert 0.5 <= sleeps[1] <= 1.0  # the second backoff without a hint: 1 s, jittered down to half


def test_retry_after_as_an_http_date_is_honoured_and_capped() -> None:
    soon = email.utils.formatdate(time.time() + 5, usegmt=True)
    sleeps: list[float] = []
    fake = FakeEngine("vllm", status(503, **{"Retry-After": soon}), status(429, **{"Retry-After": "86400"}))
    make_engine("vllm", fake, sleeps=sleeps).score([("q", "a")])
    assert 3.0 <= sleeps[0] <= 5.0
    assert sleeps[1] == 30.0  # a day is capped at the policy's longest wait


def test_timeout_and_connection_error_then_success() -> None:
    fake = FakeEngine("cohere", raises(httpx.ReadTimeout), raises(httpx.ConnectError))
    scores = make_engine("cohere", fake).score([("q", "a")])
    assert scores == pytest.approx([true_logit("q", "a")], abs=1e-9)
    assert len(fake.requests) == 3


def test_5xx_gives_up_after_the_attempts_with_a_clear_error() -> None:
    fake = FakeEngine("infinity", *[status(503)] * 10)
    with pytest.raises(RemoteBackendError, match="after 4 attempts") as info:
        make_engine("infinity", fake).score([("q", "a")])
    assert (info.value.engine, info.value.url, info.value.status) == ("infinity", BASE_URL + "/rerank", 503)
    assert "status 503" in info.value.body
    assert len(fake.requests) == 4


def test_timeouts_give_up_with_a_hint() -> None:
    fake = FakeEngine("tei", *[raises(httpx.ReadTimeout)] * 10)
    with pytest.raises(RemoteBackendError, match=r"request_timeout=5 s .*raise request_timeout") as info:
        make_engine("tei", fake, request_timeout=5).score([("q", "a")])
    assert info.value.status is None
    assert len(fake.requests) == 4


def test_413_is_not_retried_and_says_what_to_change() -> None:
    body = {"error": "batch size 40 > maximum allowed batch size 32", "error_type": "Validation"}
    fake = FakeEngine("tei", status(413, body))
    with pytest.raises(RemoteBackendError, match=r"lower max_texts_per_request \(now 40\)") as info:
        make_engine("tei", fake, max_texts_per_request=40).score([("q", t) for t in TEXTS * 2])
    assert info.value.status == 413
    assert "maximum allowed batch size 32" in str(info.value)
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("engine", "code", "body"),
    [
        ("vllm", 400, {"object": "error", "message": "This model's maximum context length is 8192 tokens."}),
        (
            "tei",
            413,
            {"error": "Input validation error: `inputs` must have less than 512 tokens. Given: 600"},
        ),
    ],
)
def test_input_over_the_length_limit_says_to_truncate(
    engine: BackendName, code: int, body: dict[str, str]
) -> None:
    fake = FakeEngine(engine, status(code, body))
    with pytest.raises(RemoteBackendError, match="longer than the server accepts: truncate") as info:
        make_engine(engine, fake).score([("q", "a very long text")])
    assert info.value.status == code
    assert len(fake.requests) == 1


def test_404_points_at_base_url() -> None:
    fake = FakeEngine("vllm", status(404))
    with pytest.raises(RemoteBackendError, match="base_url must be the engine's root URL"):
        make_engine("vllm", fake).score([("q", "a")])


def test_other_400_names_the_model() -> None:
    fake = FakeEngine("infinity", status(400, {"error": {"message": "Invalid model"}}))
    with pytest.raises(RemoteBackendError, match="model 'test-model'"):
        make_engine("infinity", fake).score([("q", "a")])


def _reply(payload: Any) -> Step:
    return lambda request: httpx.Response(200, json=payload)


@pytest.mark.parametrize(
    ("engine", "step", "message"),
    [
        ("tei", _reply({"results": []}), "expected a list of results"),
        (
            "infinity",
            _reply([{"index": 0, "relevance_score": 1.0}]),
            "expected an object with a 'results' list",
        ),
        (
            "infinity",
            _reply({"results": [{"index": 0, "relevance_score": 1.0}]}),
            "1 of 2 texts have no result",
        ),
        ("cohere", _reply({"results": [{"index": 0, "relevance_score": 0.5}] * 2}), "index 0 appears twice"),
        (
            "vllm",
            _reply({"results": [{"index": i, "relevance_score": 0.5} for i in (0, 2)]}),
            "index 2, outside 0..1",
        ),
        ("tei", _reply([{"index": "0", "score": 1.0}, {"index": 1, "score": 1.0}]), "no integer 'index'"),
        (
            "tei",
            _reply([{"index": 0, "score": "high"}, {"index": 1, "score": 1.0}]),
            "no finite number 'score'",
        ),
        (
            "tei",
            _reply([{"index": 0, "score": True}, {"index": 1, "score": 1.0}]),
            "no finite number 'score'",
        ),
        ("vllm", _reply({"results": [{"index": i, "relevance_score": 3.2} for i in (0, 1)]}), "outside 0..1"),
        ("cohere", lambda request: httpx.Response(200, text="<html>gateway</html>"), "not JSON"),
        (
            "infinity",
            lambda request: httpx.Response(200, text='{"results": [{"index": 0, "relevance_score": NaN}]}'),
            "finite",
        ),
    ],
)
def test_malformed_replies_are_clear_errors_and_not_retried(
    engine: BackendName, step: Step, message: str
) -> None:
    fake = FakeEngine(engine, step)
    with pytest.raises(RemoteBackendError, match=message) as info:
        make_engine(engine, fake).score([("q", "a"), ("q", "b")])
    assert info.value.status == 200
    assert len(fake.requests) == 1


def test_api_key_from_the_environment_is_sent_and_never_shown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("BGE_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    fake = FakeEngine("cohere", status(503), status(401, {"message": "invalid api token"}))
    backend = make_engine("cohere", fake, api_key_env="BGE_TEST_KEY")
    with pytest.raises(RemoteBackendError, match=r"check the API key in \$BGE_TEST_KEY") as info:
        backend.score([("q", "a")])
    assert [r.headers["authorization"] for r in fake.requests] == [f"Bearer {SECRET}"] * 2
    assert backend.score([("q", "a")]) == pytest.approx([true_logit("q", "a")], abs=1e-9)
    shown = [str(info.value), repr(info.value), repr(backend), repr(backend.config), caplog.text]
    shown.append(repr(Reranker("rerank-v3.5", backend="cohere", api_key_env="BGE_TEST_KEY").load()))
    assert not [s for s in shown if SECRET in s]


def test_missing_api_key_variable_fails_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BGE_TEST_KEY", raising=False)
    backend = make_engine("cohere", FakeEngine("cohere"), api_key_env="BGE_TEST_KEY")
    with pytest.raises(RemoteBackendError, match=r"BGE_TEST_KEY .* is not set"):
        backend.load()
    assert not backend.is_loaded


def test_401_without_api_key_env_says_to_set_it() -> None:
    with pytest.raises(RemoteBackendError, match="set api_key_env"):
        make_engine("tei", FakeEngine("tei", status(401))).score([("q", "a")])


def test_credentials_in_base_url_are_never_shown() -> None:
    fake = FakeEngine("tei", status(400))
    backend = make_engine("tei", fake, base_url="http://user:hunter2@127.0.0.1:9")
    with pytest.raises(RemoteBackendError) as info:
        backend.score([("q", "a")])
    assert "hunter2" not in str(info.value) + repr(backend)
    assert info.value.url == "http://127.0.0.1:9/rerank"


def test_cohere_defaults_to_the_public_api() -> None:
    fake = FakeEngine("cohere")
    config = RerankerConfig(model="rerank-v3.5", backend="cohere")
    RemoteEngine(config, transport=httpx.MockTransport(fake)).score([("q", "a")])
    assert str(fake.requests[0].url) == "https://api.cohere.com/v2/rerank"


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="base_url must start with http"):
        RemoteEngine(RerankerConfig(backend="tei", base_url="127.0.0.1:8080"))
    with pytest.raises(ValueError, match="backend must be one of"):
        RemoteEngine(RerankerConfig(backend="local"))


def test_load_is_lazy_idempotent_and_thread_safe() -> None:
    fake = FakeEngine("vllm")
    backend = make_engine("vllm", fake)
    assert not backend.is_loaded
    assert backend.score([]) == []
    assert not backend.is_loaded
    assert not fake.requests  # empty input sends nothing
    threads = [threading.Thread(target=backend.load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert backend.is_loaded
    assert backend.score([("q", "a")]) == pytest.approx([true_logit("q", "a")], abs=1e-9)
    backend.close()
    assert not backend.is_loaded


def test_one_failing_request_fails_the_call() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["query"] == "bad":
            return httpx.Response(422, json={"detail": "unprocessable"})
        return FakeEngine("infinity")(request)

    backend = make_engine("infinity", handler, max_concurrent_requests=4)
    with pytest.raises(RemoteBackendError, match="HTTP 422"):
        backend.score([("good", t) for t in TEXTS] + [("bad", "x")] + [("other", t) for t in TEXTS])


def test_a_failure_stops_the_other_requests_retrying() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["query"] == "bad":
            return httpx.Response(400, json={"error": "bad request"})
        return httpx.Response(503, json={"error": "overloaded"})

    fake = FakeEngine("tei", *[handler] * 20)
    config = RerankerConfig(backend="tei", base_url=BASE_URL, max_concurrent_requests=2)
    backend = RemoteEngine(config, transport=httpx.MockTransport(fake), retry=RetryPolicy(base_delay=2.0))
    start = time.monotonic()
    with pytest.raises(RemoteBackendError, match="HTTP 400"):
        backend.score([("slow", "a"), ("bad", "b")])
    assert time.monotonic() - start < 1.5  # the 503 would have waited 1 to 2 s before its retry
    assert len(fake.requests) == 2


@pytest.mark.parametrize("engine", ["cohere", "vllm"])
def test_normalize_gives_the_engines_probability_back(engine: BackendName) -> None:
    probabilities = [0.0, 1e-9, 0.02, 0.5, 0.73, 0.999, 0.99999994, 1.0]
    texts = [f"doc {i}" for i in range(len(probabilities))]

    def handler(request: httpx.Request) -> httpx.Response:
        docs = json.loads(request.content)["documents"]
        order = random.Random(1).sample(range(len(docs)), len(docs))
        results = [{"index": i, "relevance_score": probabilities[texts.index(docs[i])]} for i in order]
        return httpx.Response(200, json={"results": results})

    reranker = reranker_on(handler, "rerank-v3.5", backend=engine, base_url=BASE_URL, normalize=True)
    assert reranker.score("q", texts) == pytest.approx(probabilities, abs=1e-6)
    raw = reranker.score("q", texts, normalize=False)
    assert raw == sorted(raw)  # logits keep the probabilities' order
    assert raw[3] == 0.0
    ranked = reranker.rank("q", list(reversed(texts)), top_n=2)
    assert [r.index for r in ranked] == [0, 1]


@pytest.mark.asyncio
async def test_async_scoring_through_the_remote_backend() -> None:
    reranker = reranker_on(FakeEngine("tei"), backend="tei", base_url=BASE_URL)
    assert await reranker.ascore("q", TEXTS[:3]) == [true_logit("q", t) for t in TEXTS[:3]]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


def _real_backend(port: int, **settings: Any) -> RemoteEngine:
    config = RerankerConfig(backend="tei", base_url=f"http://127.0.0.1:{port}", **settings)
    return RemoteEngine(config, retry=RetryPolicy(attempts=2, sleep=lambda _: None))


def test_a_real_silent_server_times_out(silent_server: int) -> None:
    start = time.monotonic()
    with pytest.raises(RemoteBackendError, match=r"no reply within request_timeout=0.3 s \(ReadTimeout\)"):
        _real_backend(silent_server, request_timeout=0.3).score([("q", "a")])
    assert time.monotonic() - start < 5


def test_a_closed_port_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RemoteBackendError, match=r"cannot reach the server .*check base_url") as info:
        _real_backend(port).score([("q", "a")])
    assert info.value.status is None


def test_concurrent_callers_keep_several_requests_in_flight() -> None:
    # The engine batches on its side: concurrent callers' requests must overlap, not queue one by one
    # behind a single in-flight request.
    fake = FakeEngine("infinity", delay=0.2)
    reranker = reranker_on(fake, backend="infinity", base_url=BASE_URL, max_concurrent_requests=4)
    passages = [f"passage {i} about pandas and bamboo" for i in range(100)]
    queries = [f"question {n}" for n in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda q: reranker.score(q, passages), queries))
    assert results == [[true_logit(q, p) for p in passages] for q in queries]
    assert len(fake.requests) == 8
    assert fake.max_in_flight == 4  # every allowed connection busy


class SlowQueryEngine(FakeEngine):
    """A fake engine that takes ``slow_seconds`` to answer one particular query."""

    def __init__(self, engine: BackendName, slow_query: str, slow_seconds: float) -> None:
        super().__init__(engine)
        self.slow_query = slow_query
        self.slow_seconds = slow_seconds

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["query"] == self.slow_query:
            time.sleep(self.slow_seconds)
        return super().__call__(request)


def test_a_slow_request_does_not_hold_up_the_callers_behind_it() -> None:
    fake = SlowQueryEngine("infinity", "slow question", slow_seconds=1.5)
    reranker = reranker_on(fake, backend="infinity", base_url=BASE_URL, max_concurrent_requests=4)
    with ThreadPoolExecutor(max_workers=4) as pool:
        slow = pool.submit(reranker.score, "slow question", TEXTS[:3])
        time.sleep(0.1)  # the slow request is in flight
        started = time.perf_counter()
        fast = [pool.submit(reranker.score, f"fast question {i}", TEXTS[:3]) for i in range(3)]
        assert [f.result(timeout=10) for f in fast] == [
            [true_logit(f"fast question {i}", t) for t in TEXTS[:3]] for i in range(3)
        ]
        fast_seconds = time.perf_counter() - started
        assert slow.result(timeout=10) == [true_logit("slow question", t) for t in TEXTS[:3]]
    assert fast_seconds < 1.0  # answered beside the slow one, not after it


def test_requests_in_flight_stay_bounded_across_concurrent_calls() -> None:
    fake = FakeEngine("infinity", delay=0.05)
    reranker = reranker_on(
        fake, backend="infinity", base_url=BASE_URL, max_concurrent_requests=3, max_texts_per_request=5
    )
    passages = [f"passage {i} about pandas" for i in range(20)]  # 4 HTTP requests a call
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: reranker.score(f"question {n}", passages), range(8)))
    assert results == [[true_logit(f"question {n}", p) for p in passages] for n in range(8)]
    assert len(fake.requests) == 32
    assert fake.max_in_flight == 3
