"""Settings of a reranker, each declared once: its type, default, check and a one-line description.

The settings fall in three groups, each a frozen dataclass that declares and checks its own fields:

- :class:`LoadSettings`: what decides the weights in memory (the model, its revision and source,
  the device and dtype). Local rerankers whose load settings resolve alike share one loaded model.
- :class:`ScoringOptions`: how pairs are scored (lengths, long passages, the batch budget, the LLM
  kinds' options). A per-call value: ``rr.score(q, ps, max_length=1024)`` overrides them for one call.
- :class:`RemoteSettings`: where the scores come from (``local`` torch or a serving engine).

:class:`RerankerConfig` is all of them in one flat, hashable value (plus the front end's
``normalize`` and ``batch_wait_ms``); :data:`SETTINGS` lists its fields in order, so the adapters and
the CLI derive their options from these declarations instead of restating them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL",
    "SETTINGS",
    "BackendName",
    "DType",
    "LoadSettings",
    "LongPassages",
    "RemoteSettings",
    "RerankerConfig",
    "ScoringOptions",
    "check_remote_scoring",
    "setting_doc",
]

DEFAULT_MODEL = "BAAI/bge-reranker-v2-m3"
"""The model every entry point uses unless told otherwise."""

DType = Literal["auto", "float32", "float16", "bfloat16", "int8"]
LongPassages = Literal["truncate", "window"]
BackendName = Literal["local", "tei", "vllm", "infinity", "cohere"]
BACKENDS: tuple[BackendName, ...] = ("local", "tei", "vllm", "infinity", "cohere")

_DTYPE_ALIASES: dict[str, DType] = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "int8": "int8",
}

# <s> Q </s></s> P </s>: four special tokens around a pair; at least one query and passage token left.
_PAIR_SPECIAL_TOKENS = 4
_MIN_MAX_LENGTH = 16


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True, kw_only=True)
class LoadSettings:
    """What decides the weights a local reranker loads (and, for a remote one, the model it asks for)."""

    model: str = field(default=DEFAULT_MODEL, metadata=_doc("Hugging Face model id or local folder."))
    device: str | tuple[str, ...] | None = field(
        default=None,
        metadata=_doc(
            "Torch device such as 'cuda:1'; None picks cuda, then mps, then cpu; a list of devices "
            "runs one model replica per device, all fed by the same batching queue."
        ),
    )
    dtype: DType = field(
        default="auto",
        metadata=_doc(
            "'auto' (on CUDA float16, bfloat16 for the LLM rerankers; float32 elsewhere), 'float32', "
            "'float16', 'bfloat16' or 'int8' (CPU only: int8 linear layers, quantized at load)."
        ),
    )
    revision: str | None = field(
        default=None, metadata=_doc("Hub revision (branch, tag or commit) of the model.")
    )
    token: str | None = field(
        default=None,
        repr=False,
        metadata=_doc("Hugging Face token for private or gated models; never shown in repr."),
    )
    cache_dir: str | None = field(
        default=None, metadata=_doc("Hub cache folder; None uses the Hugging Face default.")
    )
    local_files_only: bool = field(
        default=False, metadata=_doc("Load only from the local cache or folder, never from the Hub.")
    )
    trust_remote_code: bool = field(
        default=False, metadata=_doc("Allow model code from the Hub (not needed for bge-reranker-v2-m3).")
    )

    def __post_init__(self) -> None:
        for name in ("model", "cache_dir"):  # a pathlib.Path to a local folder is common
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty model id or folder, got {self.model!r}")
        dtype = _DTYPE_ALIASES.get(str(self.dtype).removeprefix("torch.").lower())
        if dtype is None:
            allowed = ", ".join(sorted(_DTYPE_ALIASES))
            raise ValueError(f"dtype must be one of {allowed}; got {self.dtype!r}")
        object.__setattr__(self, "dtype", dtype)
        if isinstance(self.device, list | tuple):
            object.__setattr__(self, "device", tuple(self.device))  # hashable, so it can key sharing
        devices = self.devices
        if (
            self.device == ()
            or not all(d is None or (isinstance(d, str) and d) for d in devices)
            or (len(devices) > 1 and None in devices)
        ):
            raise ValueError(
                f"device must be None, a device string like 'cuda:0' or a list of them, got {self.device!r}"
            )
        elsewhere = [d for d in devices if d is not None and d.split(":")[0] != "cpu"]
        if self.dtype == "int8" and elsewhere:
            raise ValueError(  # the same words as the load-time check for a device picked by default
                f"dtype='int8' runs on CPU only (dynamic int8 linear layers); on {elsewhere[0]} use "
                "'float16' (the default there) or 'bfloat16'"
            )

    @property
    def devices(self) -> tuple[str | None, ...]:
        """One entry per model replica (``(None,)`` lets the backend choose)."""
        return self.device if isinstance(self.device, tuple) else (self.device,)


@dataclass(frozen=True, kw_only=True)
class ScoringOptions:
    """How pairs are scored: a per-call value that a request carries to the backend.

    ``None`` for ``query_max_length`` and ``window_overlap`` means "derived from ``max_length``"
    (``* 3 // 4``, the reference's rule, and ``// 8``), so overriding ``max_length`` for one call
    scores as a reranker built with that ``max_length`` does. The LLM kinds' options (``prompt``,
    ``cutoff_layers``, ``compress_ratio``, ``compress_layers``) are ``None`` for the model's default;
    a model kind that has no such option refuses a value.
    """

    max_length: int = field(
        default=512,
        metadata=_doc(
            "Tokens of a whole (query, passage) pair, special tokens included (the model allows up "
            "to 8192); longer passages are cut."
        ),
    )
    query_max_length: int | None = field(
        default=None,
        metadata=_doc("Tokens kept of the query; None means max_length * 3 // 4, as the reference."),
    )
    long_passages: LongPassages = field(
        default="truncate",
        metadata=_doc(
            "'truncate' (the reference's rule) or 'window': score overlapping windows of a long "
            "passage and keep the best, so text past max_length counts (one pair per window)."
        ),
    )
    window_overlap: int | None = field(
        default=None,
        metadata=_doc("Tokens shared by consecutive windows in 'window' mode; None means max_length // 8."),
    )
    max_windows: int = field(
        default=16, metadata=_doc("Windows per passage at most in 'window' mode, from its start.")
    )
    max_batch_tokens: int = field(
        default=16384,
        metadata=_doc(
            "Tokens per forward pass: real tokens on the padding-free path, padded tokens (batch size "
            "times its longest pair) for other models; lower it if memory is short."
        ),
    )
    prompt: str | None = field(
        default=None,
        metadata=_doc("LLM rerankers: the instruction put after the passage; None uses the model's default."),
    )
    cutoff_layers: tuple[int, ...] | None = field(
        default=None,
        metadata=_doc("Layer-wise LLM rerankers: the layer whose head gives the score; None: the model's."),
    )
    compress_ratio: int | None = field(
        default=None,
        metadata=_doc("Lightweight LLM reranker: passage tokens merged into one; None: the model's."),
    )
    compress_layers: tuple[int, ...] | None = field(
        default=None,
        metadata=_doc("Lightweight LLM reranker: layers where passage tokens are merged; None: the model's."),
    )

    def __post_init__(self) -> None:
        _check_int("max_length", self.max_length, _MIN_MAX_LENGTH)
        if self.query_max_length is not None:
            _check_int("query_max_length", self.query_max_length, 1)
        if self.resolved_query_max_length > self.max_length - _PAIR_SPECIAL_TOKENS:
            raise ValueError(
                f"query_max_length must leave room for the passage and the 4 special tokens: at most "
                f"max_length - 4 = {self.max_length - _PAIR_SPECIAL_TOKENS}, got {self.query_max_length}"
            )
        _check_int("max_batch_tokens", self.max_batch_tokens, 1)
        if self.long_passages not in ("truncate", "window"):
            raise ValueError(f"long_passages must be 'truncate' or 'window', got {self.long_passages!r}")
        if self.window_overlap is not None:
            _check_int("window_overlap", self.window_overlap, 0)
        _check_int("max_windows", self.max_windows, 1)
        min_room = self.max_length - _PAIR_SPECIAL_TOKENS - self.resolved_query_max_length
        if self.long_passages == "window" and self.resolved_window_overlap >= min_room:
            raise ValueError(
                f"window_overlap ({self.resolved_window_overlap}) must be smaller than the passage room "
                f"of a pair with the longest query, max_length - 4 - query_max_length = {min_room}"
            )
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise TypeError(f"prompt must be a str or None, got {type(self.prompt).__name__}")
        for name in ("cutoff_layers", "compress_layers"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _layers(name, value))
        if self.compress_ratio is not None:
            _check_int("compress_ratio", self.compress_ratio, 1)

    @property
    def resolved_query_max_length(self) -> int:
        """``query_max_length``, or the reference's ``max_length * 3 // 4`` when it is ``None``."""
        return self.max_length * 3 // 4 if self.query_max_length is None else self.query_max_length

    @property
    def resolved_window_overlap(self) -> int:
        """``window_overlap``, or ``max_length // 8`` when it is ``None``."""
        return self.max_length // 8 if self.window_overlap is None else self.window_overlap

    def replace(self, **overrides: Any) -> ScoringOptions:
        """These options with ``overrides`` applied and checked (a ``ValueError``/``TypeError`` names
        the bad one); an unknown name is a ``TypeError`` listing the options."""
        return _replace(self, ScoringOptions, overrides)

    def kind_options(self) -> dict[str, Any]:
        """The LLM kinds' options that are set (not ``None``), by name."""
        return {name: getattr(self, name) for name in _KIND_OPTIONS if getattr(self, name) is not None}


_G = TypeVar("_G")
_KIND_OPTIONS = ("prompt", "cutoff_layers", "compress_ratio", "compress_layers")


@dataclass(frozen=True, kw_only=True)
class RemoteSettings:
    """Where the scores come from: ``local`` torch, or a serving engine's ``/rerank``."""

    backend: BackendName = field(
        default="local",
        metadata=_doc(
            "'local' (torch in this process) or a serving engine's /rerank: 'tei', 'vllm', "
            "'infinity' or 'cohere'."
        ),
    )
    base_url: str | None = field(
        default=None,
        metadata=_doc("Root URL of the serving engine (every remote backend but 'cohere' needs one)."),
    )
    api_key_env: str | None = field(
        default=None,
        metadata=_doc("Name of the environment variable holding the API key (never the key itself)."),
    )
    request_timeout: float = field(
        default=60.0, metadata=_doc("Seconds before a remote request is abandoned (and retried).")
    )
    max_concurrent_requests: int = field(
        default=4, metadata=_doc("Remote requests in flight at once, across all calls to one reranker.")
    )
    max_texts_per_request: int | None = field(
        default=None,
        metadata=_doc("Passages per remote request; None uses the engine's default limit (TEI: 32)."),
    )
    verify_tls: bool = field(default=True, metadata=_doc("Verify the serving engine's TLS certificate."))

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        if self.backend not in ("local", "cohere") and not self.base_url:
            raise ValueError(f"backend={self.backend!r} needs base_url, the serving engine's root URL")
        if not self.request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0 seconds, got {self.request_timeout}")
        _check_int("max_concurrent_requests", self.max_concurrent_requests, 1)
        if self.max_texts_per_request is not None:
            _check_int("max_texts_per_request", self.max_texts_per_request, 1)


@dataclass(frozen=True, kw_only=True)
class RerankerConfig(RemoteSettings, ScoringOptions, LoadSettings):
    """Every setting of a reranker in one flat, frozen, hashable value (see the module docstring).

    Dtype aliases (``"fp16"``, ``"bf16"``) resolve to their canonical names and device lists to
    tuples, so equal settings compare equal.
    """

    normalize: bool = field(
        default=False,
        metadata=_doc("Default of score(normalize=...): the sigmoid of the logit instead of the raw logit."),
    )
    batch_wait_ms: float = field(
        default=0.0,
        metadata=_doc(
            "How long a batch waits for more concurrent requests; 0 batches only what is already waiting."
        ),
    )

    def __post_init__(self) -> None:
        LoadSettings.__post_init__(self)  # each group checks its own fields, then the ones they share
        ScoringOptions.__post_init__(self)
        RemoteSettings.__post_init__(self)
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"batch_wait_ms must be between 0 and 1000, got {self.batch_wait_ms}")
        if self.backend != "local":
            check_remote_scoring(self.scoring)
            if len(self.devices) > 1:
                raise ValueError("a list of devices needs backend='local'")

    @property
    def load_settings(self) -> LoadSettings:
        """The settings that decide the weights."""
        return _group(self, LoadSettings)

    @property
    def scoring(self) -> ScoringOptions:
        """The default scoring options of every call (each call may override them)."""
        return _group(self, ScoringOptions)

    @property
    def remote(self) -> RemoteSettings:
        """Where the scores come from."""
        return _group(self, RemoteSettings)

    def replace(self, **overrides: Any) -> RerankerConfig:
        """These settings with ``overrides`` applied and checked (unknown names are a ``TypeError``)."""
        return _replace(self, RerankerConfig, overrides)


SETTINGS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(RerankerConfig)
"""Every setting of :class:`RerankerConfig`, in declaration order; ``.metadata["doc"]`` describes it."""


def setting_doc(name: str) -> str:
    """The one-line description of the setting ``name``."""
    for f in SETTINGS:
        if f.name == name:
            return str(f.metadata["doc"])
    raise KeyError(name)


def check_remote_scoring(options: ScoringOptions) -> None:
    """Refuse scoring options that a serving engine's ``/rerank`` cannot honour."""
    if options.long_passages == "window":
        raise ValueError("long_passages='window' needs backend='local'; serving engines truncate")
    given = sorted(options.kind_options())
    if given:
        names = ", ".join(given)
        raise ValueError(f"{names}: a serving engine's /rerank takes no such option (use backend='local')")


def _group(config: RerankerConfig, group: type[_G]) -> _G:
    names = [f.name for f in dataclasses.fields(group)]  # type: ignore[arg-type]
    return group(**{name: getattr(config, name) for name in names})


def _replace(value: _G, kind: type[_G], overrides: dict[str, Any]) -> _G:
    names = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown setting {', '.join(unknown)}; the settings are {', '.join(sorted(names))}")
    return dataclasses.replace(value, **overrides)  # type: ignore[type-var]


def _layers(name: str, value: object) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple) or not value:
        raise TypeError(f"{name} must be a non-empty list of layer numbers, got {value!r}")
    for layer in value:
        _check_int(f"each of {name}", layer, 0)
    return tuple(value)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
