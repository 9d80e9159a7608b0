"""Every adapter and the CLI take every declared core setting and hand it to the core untouched.

Nothing here lists the settings: each test walks the declaration (``model_settings()``), so a
setting added to ``config.py`` is checked in every adapter, the Haystack ``to_dict`` and the CLI,
and ``LOCAL``/``REMOTE`` must give it a value (a test says so).
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Callable
from typing import Any

import pytest
import transformers
from haystack import Pipeline
from haystack.utils import Secret

from bge_rerank_integrations import Reranker, RerankerConfig
from bge_rerank_integrations.adapter_support import EXCLUDED_SETTINGS, MODEL_SETTINGS, model_settings
from bge_rerank_integrations.cli import main
from bge_rerank_integrations.config import SETTINGS
from bge_rerank_integrations.haystack import BGERanker
from bge_rerank_integrations.langchain import BGECrossEncoder, BGERerankCompressor
from bge_rerank_integrations.llamaindex import BGERerank

LOCAL: dict[str, Any] = {
    "model": "some/local-model",
    "device": "cpu",
    "dtype": "bfloat16",
    "revision": "v1.0",
    "cache_dir": "/tmp/bge-settings-test-cache",
    "local_files_only": True,
    "trust_remote_code": True,
    "max_length": 1024,
    "query_max_length": 100,
    "long_passages": "window",
    "window_overlap": 32,
    "max_windows": 4,
    "max_batch_tokens": 2048,
    "prompt": "Is the passage relevant?",
    "cutoff_layers": (28,),
    "compress_ratio": 2,
    "compress_layers": (8, 16),
    "batch_wait_ms": 1.5,
}
"""Local settings, none at its default, that no other test uses (a model that is never loaded)."""

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


def test_model_settings_are_every_declared_setting_but_normalize_and_token() -> None:
    assert EXCLUDED_SETTINGS == ("normalize", "token")
    assert tuple(f.name for f in SETTINGS if f.name not in EXCLUDED_SETTINGS) == MODEL_SETTINGS
    assert [s.name for s in model_settings()] == list(MODEL_SETTINGS)
    assert {"prompt", "cutoff_layers", "compress_ratio", "compress_layers"} <= set(MODEL_SETTINGS)


def test_the_test_values_give_every_setting_a_value_other_than_its_default() -> None:
    given = {**LOCAL, **REMOTE, "api_key_env": KEY_ENV}
    assert set(given) == set(MODEL_SETTINGS)  # a new setting needs a value here, nothing more
    defaults = {s.name: s.default for s in model_settings()}
    assert [n for n in LOCAL if LOCAL[n] == defaults[n]] == []
    assert [n for n in REMOTE if REMOTE[n] == defaults[n] and n != "model"] == []


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cli_args(settings: dict[str, Any]) -> list[str]:
    """``settings`` as ``bge-rerank`` options: ``--flag value``, ``--flag``/``--no-flag``, ``a,b`` lists."""
    args = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, tuple):
            args += [flag, ",".join(map(str, value))]
        else:
            args += [flag, str(value)]
    return args


class _Built(Exception):
    """Raised in place of building the CLI's reranker, carrying the settings it was given."""

    def __init__(self, config: RerankerConfig) -> None:
        super().__init__("built")
        self.config = config


def _cli_config(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> RerankerConfig:
    """The settings ``bge-rerank query q p ARGS`` builds its reranker with (nothing is built)."""

    def built(config: RerankerConfig, *rest: Any, **kwargs: Any) -> Reranker:
        raise _Built(config)

    monkeypatch.setattr(Reranker, "from_config", built)
    with pytest.raises(_Built) as info:
        main(["query", "q", "p", *args])
    return info.value.config


def test_every_declared_setting_is_exposed_everywhere_with_its_default_and_doc(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    haystack_params = inspect.signature(BGERanker.__init__).parameters
    haystack_doc = _one_line(inspect.getdoc(BGERanker.__init__) or "")
    haystack_saved = BGERanker().to_dict()["init_parameters"]
    llamaindex_saved = BGERerank().to_dict()
    with pytest.raises(SystemExit):
        main(["query", "--help"])
    cli_help = "".join(capsys.readouterr().out.split())  # argparse wraps where it likes
    for setting in model_settings():
        name, default, doc = setting.name, setting.default, _one_line(setting.doc)
        # LlamaIndex and LangChain: a frozen field with the declared default and doc, in the signature
        for cls in (BGERerank, BGERerankCompressor, BGECrossEncoder):
            field = cls.model_fields[name]
            assert (field.default, field.description, field.frozen) == (default, setting.doc, True), name
            assert name in inspect.signature(cls).parameters, name
        assert llamaindex_saved[name] == default, name
        # Haystack: an explicit keyword-only parameter, None (the core's default) unless it is the model
        param = "api_key" if name == "api_key_env" else name
        assert haystack_params[param].kind is inspect.Parameter.KEYWORD_ONLY, param
        assert haystack_params[param].default == (default if name == "model" else None), param
        assert f":param {param}:" in haystack_doc, param
        if param not in ("device", "backend", "api_key"):  # these differ in form; documented by hand
            assert f":param {param}: {doc}" in haystack_doc, param
        assert haystack_saved[param] == haystack_params[param].default, param
        # the CLI: an option whose help is the doc, with the default shown
        flag = "--" + name.replace("_", "-")
        assert f"[{flag}" in cli_help, flag
        shown = "".join(doc.split()) + ("" if default is None else f"(default:{default})")
        assert shown in cli_help, flag
    # and what the CLI builds when nothing is given is the declaration's defaults
    assert _cli_config(monkeypatch, []) == RerankerConfig(normalize=True)


@pytest.mark.parametrize("settings", [REMOTE, LOCAL], ids=["remote", "local"])
def test_cli_options_reach_the_core(settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    config = _cli_config(monkeypatch, _cli_args({**settings, "api_key_env": KEY_ENV}))
    for name, value in {**settings, "api_key_env": KEY_ENV}.items():
        assert getattr(config, name) == value, name
    assert config == RerankerConfig(**settings, api_key_env=KEY_ENV, normalize=True)


@pytest.mark.parametrize("settings", [REMOTE, LOCAL], ids=["remote", "local"])
def test_haystack_saves_every_setting_and_loads_it_back(
    settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    ranker = BGERanker(**settings, api_key=Secret.from_env_var(KEY_ENV))
    saved = ranker.to_dict()["init_parameters"]
    restored = BGERanker.from_dict(ranker.to_dict())
    assert restored.to_dict()["init_parameters"] == saved
    config = restored.reranker.config
    for name, value in settings.items():
        assert getattr(config, name) == value, name
    assert config.api_key_env == KEY_ENV
    assert restored.reranker is ranker.reranker


def test_a_haystack_pipeline_keeps_the_kind_options_through_yaml() -> None:
    pipeline = Pipeline()
    ranker = BGERanker(model="some/layerwise-model", cutoff_layers=[28], prompt="Yes?")
    pipeline.add_component("ranker", ranker)
    yaml = pipeline.dumps()
    assert "cutoff_layers" in yaml
    loaded = Pipeline.loads(yaml).get_component("ranker")
    assert isinstance(loaded, BGERanker)
    assert (loaded.cutoff_layers, loaded.prompt) == ([28], "Yes?")
    assert (loaded.reranker.config.cutoff_layers, loaded.reranker.config.prompt) == ((28,), "Yes?")
    assert loaded.reranker is ranker.reranker


@pytest.mark.parametrize("cls", [BGERerank, BGERerankCompressor, BGECrossEncoder])
def test_pydantic_adapters_read_back_the_kind_options_and_pass_them_on(cls: type[Any]) -> None:
    adapter = cls(model="some/llm-reranker", prompt="Is it relevant?", compress_layers=[8, 16])
    assert (adapter.prompt, adapter.compress_layers) == ("Is it relevant?", (8, 16))
    config = adapter.reranker.config
    assert (config.prompt, config.compress_layers) == ("Is it relevant?", (8, 16))
    if cls is BGERerank:
        again = BGERerank.from_json(adapter.to_json())
        assert (again.prompt, again.compress_layers) == ("Is it relevant?", (8, 16))
        assert again.reranker is adapter.reranker


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
