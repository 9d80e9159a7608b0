"""The remote backend against a loopback HTTP server that breaks its replies half-way: it closes the
connection after part of the headers or the body, sends a body shorter than its ``Content-Length``,
resets the connection, answers garbage, or trickles the reply in a byte at a time.

Whatever the server does, a call returns exactly its own scores (when a retry reaches a healthy reply)
or raises ``RemoteBackendError`` within its timeout plus the retry budget; none hangs. The server
speaks Infinity's dialect and scores pairs with a deterministic fake model, so the right answer of
every call is known exactly.
"""

from __future__ import annotations

import json
import random
import socket
import socketserver
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bge_rerank_integrations import RemoteBackendError, Reranker, RerankerConfig
from bge_rerank_integrations.backends.remote import RemoteEngine, RetryPolicy
from tests.backends.faults import Callers, Request, assert_distinguishable, call_budget, check, summary

REQUEST_TIMEOUT = 0.5
# Back off for at most 0.2 s between attempts (default: 0.5 s doubling), so a call that fails for good
# does so in about a second; retries and timeouts are unchanged.
FAST_RETRIES = RetryPolicy(base_delay=0.05, max_delay=0.2)
CALLERS = 50
TEXTS_PER_REQUEST = 4  # calls of 5 to 8 passages become two requests, sent side by side


def fake_logit(query: str, text: str) -> float:
    """The fake model: a deterministic logit in [-10, 10] per pair."""
    return (zlib.crc32(f"{query}\x00{text}".encode()) % 20001 - 10000) / 1000


Fault = Callable[[socket.socket, bytes, bytes], None]
"""Answers one request badly, given the right reply's head and body; the connection is closed after."""


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST


def _close_before_reply(sock: socket.socket, head: bytes, body: bytes) -> None:
    pass


def _cut_headers(sock: socket.socket, head: bytes, body: bytes) -> None:
    sock.sendall(head[: len(head) // 2])


def _cut_body(sock: socket.socket, head: bytes, body: bytes) -> None:
    sock.sendall(head + body[: len(body) // 2])


def _short_body(sock: socket.socket, head: bytes, body: bytes) -> None:
    longer = head.replace(b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 100))
    sock.sendall(longer + body)


def _cut_chunked(sock: socket.socket, head: bytes, body: bytes) -> None:
    chunked = head.replace(b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked")
    half = body[: len(body) // 2]
    sock.sendall(chunked + b"%x\r\n%s\r\n" % (len(half), half))  # no closing zero-length chunk


def _reset_before_reply(sock: socket.socket, head: bytes, body: bytes) -> None:
    _reset(sock)


def _reset_mid_body(sock: socket.socket, head: bytes, body: bytes) -> None:
    sock.sendall(head + body[: len(body) // 2])
    time.sleep(0.01)  # let the client read the first half before the reset
    _reset(sock)


def _garbage(sock: socket.socket, head: bytes, body: bytes) -> None:
    sock.sendall(b"\x00\x17 not http at all\r\n\r\n")


def _trickle(sock: socket.socket, head: bytes, body: bytes) -> None:
    """Every byte arrives within the read timeout, the whole reply takes many times request_timeout."""
    sock.sendall(head)
    for byte in body:
        sock.sendall(bytes([byte]))
        time.sleep(REQUEST_TIMEOUT / 3)


FAULTS: dict[str, Fault] = {
    "close before the reply": _close_before_reply,
    "close inside the headers": _cut_headers,
    "close half-way through the body": _cut_body,
    "body shorter than Content-Length": _short_body,
    "chunked body cut off": _cut_chunked,
    "reset before the reply": _reset_before_reply,
    "reset half-way through the body": _reset_mid_body,
    "garbage instead of HTTP": _garbage,
    "reply trickling in": _trickle,
}


class BrokenServer(socketserver.ThreadingTCPServer):
    """Infinity's ``/rerank`` on 127.0.0.1, keep-alive; ``fault_for(n)`` picks how the n-th request (from
    0, over all connections) is answered: ``None`` answers it right."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        """Listen on a free port; serve with :meth:`serve_forever` in a thread."""
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.fault_for: Callable[[int], Fault | None] = lambda n: None
        self.requests = 0
        self.faults = 0
        self._lock = threading.Lock()

    def next_fault(self) -> Fault | None:
        with self._lock:
            fault = self.fault_for(self.requests)
            self.requests += 1
            self.faults += fault is not None
            return fault


class _Handler(socketserver.StreamRequestHandler):
    server: BrokenServer

    def handle(self) -> None:
        while (body := self._read_request()) is not None:
            texts = body["documents"]
            order = random.sample(range(len(texts)), len(texts))  # results out of order, as engines do
            results = [{"index": i, "relevance_score": fake_logit(body["query"], texts[i])} for i in order]
            reply = json.dumps({"object": "rerank", "results": results}).encode()
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(
                reply
            )
            fault = self.server.next_fault()
            try:
                if fault is None:
                    self.wfile.write(head + reply)
                    continue
                fault(self.connection, head, reply)
            except OSError:  # the client gave up first (a trickle it abandoned)
                pass
            return

    def _read_request(self) -> dict[str, Any] | None:
        """The JSON body of the next request on this connection, ``None`` once the client closed it."""
        length = None
        while True:
            line = self.rfile.readline()
            if not line:
                return None
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        assert length is not None, "a request without Content-Length"
        payload: dict[str, Any] = json.loads(self.rfile.read(length))
        return payload


@pytest.fixture
def server() -> Iterator[BrokenServer]:
    """A healthy server until the test sets ``fault_for``."""
    with BrokenServer() as srv:
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield srv
        finally:
            srv.shutdown()
            thread.join(10.0)


def make_reranker(server: BrokenServer, callers: int) -> Reranker:
    """A reranker on the server with a slot for every request of every caller (so none queues), and
    :data:`FAST_RETRIES`."""
    config = RerankerConfig(
        model="fake-model",
        backend="infinity",
        base_url=server.url,
        request_timeout=REQUEST_TIMEOUT,
        max_texts_per_request=TEXTS_PER_REQUEST,
        max_concurrent_requests=2 * callers,
    )
    return Reranker.from_config(config, engine=RemoteEngine(config, retry=FAST_RETRIES))


def make_requests(count: int, seed: int = 0) -> tuple[list[Request], list[list[float]]]:
    """``count`` distinct requests of 1 to 8 passages, and their true scores."""
    rng = random.Random(seed)
    requests: list[Request] = []
    for n in range(count):
        passages = [f"passage {rng.randrange(10**6)} of request {n}" for _ in range(rng.randint(1, 8))]
        requests.append((f"query number {n}", passages))
    expected = [[fake_logit(q, p) for p in passages] for q, passages in requests]
    assert_distinguishable(expected, 0.0)
    return requests, expected


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_a_server_that_always_breaks_its_reply_fails_each_call_in_bounded_time(
    server: BrokenServer, fault: Fault
) -> None:
    server.fault_for = lambda n: fault
    reranker = make_reranker(server, callers=8)
    requests, _ = make_requests(8)
    budget = call_budget(REQUEST_TIMEOUT, FAST_RETRIES)
    callers = Callers(reranker, requests, threads=4, tasks=4)
    time.sleep(0.2)  # let every caller start a call
    calls = callers.stop(within=budget)
    assert calls
    for call in calls:
        assert isinstance(call.error, RemoteBackendError), (call.caller, call.error, call.scores)
        assert call.error.status is None  # a transport failure, not a reply
        assert call.end - call.start <= budget, f"{call.caller} failed after {call.end - call.start:.1f} s"


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_a_server_that_recovers_gives_every_call_its_exact_scores(server: BrokenServer, fault: Fault) -> None:
    # The first two requests are broken, then the server answers right: the third attempt succeeds.
    server.fault_for = lambda n: fault if n < 2 else None
    reranker = make_reranker(server, callers=1)
    requests, expected = make_requests(6)
    for (query, passages), scores in zip(requests, expected, strict=True):
        assert reranker.score(query, passages) == scores
    assert server.faults == 2


def test_fifty_threads_and_fifty_tasks_against_random_broken_replies(server: BrokenServer) -> None:
    # A quarter of all replies break, each in a random way: most calls succeed after a retry, a few
    # fail for good; none returns another call's scores, none hangs.
    rng = random.Random(3)
    lock = threading.Lock()
    faults = list(FAULTS.values())

    def fault_for(n: int) -> Fault | None:
        with lock:
            return rng.choice(faults) if rng.random() < 0.25 else None

    server.fault_for = fault_for
    reranker = make_reranker(server, callers=2 * CALLERS)
    requests, expected = make_requests(97)
    budget = call_budget(REQUEST_TIMEOUT, FAST_RETRIES)
    callers = Callers(reranker, requests, threads=CALLERS, tasks=CALLERS)
    time.sleep(3.0)
    calls = callers.stop(within=budget)
    check(calls, expected, budget=budget, tolerance=0.0)
    assert server.faults > 100
    assert sum(c.error is None for c in calls) > len(calls) // 2
    print(summary("random broken replies", calls, budget), f"; {server.faults} of {server.requests} broken")

    server.fault_for = lambda n: None  # healthy again: every call succeeds
    for (query, passages), scores in zip(requests, expected, strict=True):
        assert reranker.score(query, passages) == scores
