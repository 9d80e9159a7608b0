"""Every adapter takes every core model setting and hands it to the core untouched, loading nothing."""

from __future__ import annotations

import inspect
import socket
from collections.abc import Callable
from typing import Any

import pytest
import transformers
from haystack.utils import Secret

from bge_rerank_integrations import Reranker
from bge_rerank_integrations.adapter_support import MODEL_SETTINGS
from bge_rerank_integrations.haystack import BGERanker
from bge_rerank_integrations.langchain import BGECrossEncoder, BGERerankCompressor
from bge_rerank_integrations.llamaindex import BGERerank

LOCAL: dict[str, Any] = {
    "model": "some/local-model",
    "long_passages": "window",
    "window_overlap": 32,
    "max_windows": 4,
    "batch_wait_ms": 1.5,
    "max_length": 1024,
    "local_files_only": True,
}
"""Long-passage and batching settings no other test uses (a model that is never loaded)."""

REMOTE: dict[str, Any] = {
    "model": "BAAI/bge-reranker-v2-m3",
    "backend": "tei",
    "base_url": "http://127.0.0.1:9",
    "batch_wait_ms": 2.0,
    "request_timeout": 3.0,
    "max_concurrent_requests": 2,
    "max_texts_per_request": 8,
    "verify_tls": False,  # a falsy value is passed, not dropped
}
"""Remote-backend settings no other test uses, pointing at a port nothing listens on."""

KEY_ENV = "BGE_TEST_SETTINGS_KEY"


def llamaindex(**settings: Any) -> Reranker:
    """The core of a LlamaIndex ``BGERerank`` built with ``settings``."""
    return BGERerank(**settings, api_key_env=KEY_ENV).reranker


def langchain_compressor(**settings: Any) -> Reranker:
    """The core of a LangChain ``BGERerankCompressor`` built with ``settings``."""
    return BGERerankCompressor(**settings, api_key_env=KEY_ENV).reranker


def langchain_cross_encoder(**settings: Any) -> Reranker:
    """The core of a LangChain ``BGECrossEncoder`` built with ``settings``."""
    return BGECrossEncoder(**settings, api_key_env=KEY_ENV).reranker


def haystack(**settings: Any) -> Reranker:
    """The core of a Haystack ``BGERanker`` built with ``settings`` (the key as an env-var Secret)."""
    return BGERanker(**settings, api_key=Secret.from_env_var(KEY_ENV)).reranker


BUILDERS = [llamaindex, langchain_compressor, langchain_cross_encoder, haystack]


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record (and refuse) every socket connection and every model load made during the test."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise ConnectionRefusedError(f"test: no connection allowed to {address!r}")

    def no_load(*args: Any, **kwargs: Any) -> Any:
        attempts.append(("from_pretrained", args))
        raise AssertionError("test: no model load allowed")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", no_load)
    return attempts


def test_model_settings_are_the_cores_but_normalize_and_token() -> None:
    assert "normalize" not in MODEL_SETTINGS
    assert "token" not in MODEL_SETTINGS
    assert {"backend", "base_url", "api_key_env", "long_passages", "batch_wait_ms"} <= set(MODEL_SETTINGS)


@pytest.mark.parametrize("cls", [BGERerank, BGERerankCompressor, BGECrossEncoder])
def test_pydantic_adapters_expose_every_setting_as_a_described_field(cls: type[Any]) -> None:
    for name in MODEL_SETTINGS:
        field = cls.model_fields[name]
        assert field.frozen, name
        assert field.description, name
    if cls is BGERerank:  # LlamaIndex's explicit __init__ names them all too
        assert set(MODEL_SETTINGS) <= set(inspect.signature(cls.__init__).parameters)


def test_haystack_takes_every_setting_and_saves_it() -> None:
    expected = {"api_key" if name == "api_key_env" else name for name in MODEL_SETTINGS}
    assert expected <= set(inspect.signature(BGERanker.__init__).parameters)
    assert expected <= set(BGERanker().to_dict()["init_parameters"])


@pytest.mark.parametrize("settings", [REMOTE, LOCAL], ids=["remote", "local"])
@pytest.mark.parametrize("build", BUILDERS)
def test_settings_reach_the_core_and_nothing_is_loaded_or_contacted(
    build: Callable[..., Reranker],
    settings: dict[str, Any],
    no_connections: list[object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    core = build(**settings)
    config = core.config
    for name, value in settings.items():
        assert getattr(config, name) == value, name
    assert config.api_key_env == KEY_ENV
    assert not core.is_loaded
    assert no_connections == []


def test_equal_settings_share_one_core_across_frameworks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    cores = [build(**REMOTE) for build in BUILDERS]
    assert all(core is cores[0] for core in cores)
    assert llamaindex(**{**REMOTE, "batch_wait_ms": 3.0}) is not cores[0]


@pytest.mark.parametrize("settings", [REMOTE, LOCAL], ids=["remote", "local"])
def test_settings_read_back_and_survive_llamaindex_serialization(settings: dict[str, Any]) -> None:
    rerank = BGERerank(**settings, api_key_env=KEY_ENV)
    compressor = BGERerankCompressor(**settings, api_key_env=KEY_ENV)
    for name, value in {**settings, "api_key_env": KEY_ENV}.items():
        assert getattr(rerank, name) == value, name
        assert getattr(compressor, name) == value, name
    again = BGERerank.from_dict(rerank.to_dict())
    assert again.reranker is rerank.reranker


def test_windows_with_a_remote_backend_are_refused_by_every_adapter() -> None:
    for build in BUILDERS:
        with pytest.raises(ValueError, match="long_passages='window' needs backend='local'"):
            build(**REMOTE, long_passages="window")


def test_a_device_list_passes_through(no_connections: list[object]) -> None:
    rerank = BGERerank(model="some/model", device=["cpu", "cpu"])
    compressor = BGERerankCompressor(model="some/model", device=["cpu", "cpu"])
    assert rerank.device == compressor.device == ("cpu", "cpu")
    assert rerank.reranker is compressor.reranker
    assert rerank.reranker.config.devices == ("cpu", "cpu")
    assert BGERerank.from_dict(rerank.to_dict()).reranker is rerank.reranker


@pytest.mark.parametrize(
    "build",
    [
        lambda core: BGERerank(reranker=core, backend="tei", base_url="http://127.0.0.1:9"),
        lambda core: BGERerankCompressor(reranker=core, backend="tei", base_url="http://127.0.0.1:9"),
        lambda core: BGERanker(reranker=core, backend="tei", base_url="http://127.0.0.1:9"),
    ],
)
def test_a_ready_reranker_refuses_remote_settings(build: Callable[[Reranker], object]) -> None:
    core = Reranker("some/model")
    with pytest.raises(ValueError, match=r"either reranker or model settings, not both.*backend, base_url"):
        build(core)
