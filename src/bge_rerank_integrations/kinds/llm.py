"""The decoder-only BGE rerankers as model kinds: v2-gemma, v2-minicpm-layerwise, v2.5-gemma2-lightweight.

Each kind is chosen from the raw ``config.json`` (``architectures``, else ``model_type``:
:func:`~bge_rerank_integrations.llm_layout.detect_llm_kind`), builds FlagEmbedding's exact input ids
(:mod:`~bge_rerank_integrations.llm_layout`) and scores one fp32 logit per pair:

- v2-gemma: the ``Yes`` logit at the last position of a ``GemmaForCausalLM``
  (:mod:`~bge_rerank_integrations.llm_forward`); option ``prompt``.
- v2-minicpm-layerwise: the score head of one layer of MiniCPM; options ``prompt``,
  ``cutoff_layers``.
- v2.5-gemma2-lightweight: Gemma-2 with a score head per layer and passage-token compression;
  options ``prompt``, ``cutoff_layers``, ``compress_ratio``, ``compress_layers``.

The two layer-wise kinds load their weights into transformers' own Llama and Gemma-2 modules
(:mod:`~bge_rerank_integrations.llm_layerwise`): their repositories' custom code never runs. They
still require ``trust_remote_code=True``, as FlagEmbedding and ``transformers`` do for these
checkpoints (their ``config.json`` declares custom code in ``auto_map``): a setting that works here
then works with the reference and with any engine that runs the shipped code, and a user who does
not trust the repository is not silently served from it.

``cutoff_layers`` names one layer: this package gives one score per passage, while FlagEmbedding
given several layers returns one list of scores per layer. Several layers are refused rather than
reduced to one of them (the caller would not know which), so scoring each layer is one call per
layer. None of these kinds runs padding-free: batches are padded on the right (a causal model needs
no mask for that, and the score is read at each row's own last token), so the budget counts padded
tokens. On GPU the kinds prefer bfloat16 (:attr:`DecoderKind.gpu_dtype`): Gemma-2's activations
overflow float16.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from bge_rerank_integrations.backends.model_source import check_model_name, load_error_message
from bge_rerank_integrations.errors import ModelLoadError
from bge_rerank_integrations.kinds.base import Encoded
from bge_rerank_integrations.llm_layout import LLM_KINDS, LLMKind, LLMPairEncoder, detect_llm_kind

if TYPE_CHECKING:
    import torch

    from bge_rerank_integrations.config import LoadSettings, ScoringOptions
    from bge_rerank_integrations.llm_layerwise import LightweightGemma2, MiniCPMLayerwise

__all__ = [
    "LIGHTWEIGHT_COMPRESS_LAYERS",
    "DecoderKind",
    "DecoderModel",
    "GemmaKind",
    "LightweightGemma2Kind",
    "LightweightRow",
    "MiniCPMLayerwiseKind",
    "read_model_config",
]

LIGHTWEIGHT_COMPRESS_LAYERS = (8,)
"""``compress_layers`` when it is ``None`` (FlagEmbedding's default; it acts only with a ratio above 1)."""

_ENCODERS_KEPT = 32  # encoders of distinct (lengths, prompt) kept per model; more are rebuilt per call


class LightweightRow(list[int]):
    """One row of the lightweight kind: its ids (a list, so ``len`` and iteration are the ids', as
    the core counts and shows rows), and the lengths its passage compression needs."""

    __slots__ = ("prompt_length", "query_length")

    def __init__(self, ids: Sequence[int], query_length: int, prompt_length: int) -> None:
        super().__init__(ids)
        self.query_length = query_length
        """``len([<bos>] + query ids + sep)``: the tokens before the passage."""
        self.prompt_length = prompt_length
        """``len(sep + prompt ids)``: the tokens after the passage."""

    @property
    def ids(self) -> list[int]:
        """The token ids, as a plain list."""
        return list(self)


class DecoderModel:
    """A decoder-only reranker loaded on one device: FlagEmbedding's ids and one fp32 score per row.

    Shared by every backend whose weights key matches, so it keeps no per-call state: the encoder of
    each (lengths, prompt) is made once and reused, and the forward reads its options per call.
    """

    padding_free: ClassVar[bool] = False
    """Batches are padded (on the right), so a batch costs its size times its longest row."""

    def __init__(
        self,
        kind: LLMKind,
        model: Any,
        encoder: LLMPairEncoder,
        *,
        device: torch.device,
        position_limit: int | None,
        pad_id: int,
    ) -> None:
        """Wrap a loaded ``model`` (in eval mode on ``device``) and the kind's default ``encoder``."""
        self.kind = kind
        self.model = model
        self.pad_id = pad_id
        self.position_limit = position_limit
        self._device = device
        self._encoder = encoder
        self._encoders: dict[tuple[int, int, str | None], LLMPairEncoder] = {}
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        """Where the forward runs."""
        return self._device

    def encode(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> Encoded:
        """FlagEmbedding's input ids of ``pairs`` under ``options``, one row per pair.

        Raises:
            ValueError: an option this kind has not, ``long_passages='window'``, pairs longer than the
                model's positions, or a layer option the model cannot honour (the message names it).
        """
        self.check_options(options)
        encoded = self._encoder_for(options).encode(pairs)
        lengths = [len(ids) for ids in encoded.ids]
        return Encoded(
            rows=self._rows(encoded.ids, encoded.query_lengths, encoded.prompt_lengths), lengths=lengths
        )

    def forward(self, rows: Sequence[Any], options: ScoringOptions) -> torch.Tensor:
        """fp32 logits ``[len(rows)]`` on the device, for rows of :meth:`encode` under ``options``."""
        raise NotImplementedError

    def check_options(self, options: ScoringOptions) -> None:
        """Refuse options this kind or model cannot honour, naming each."""
        foreign = sorted(set(options.kind_options()) - set(self.kind.options))
        if foreign:
            own = ", ".join(self.kind.options)
            raise ValueError(
                f"{', '.join(foreign)}: the {self.kind.name} reranker has no such option (its own: {own})"
            )
        if options.long_passages != "truncate":
            raise ValueError(
                f"long_passages={options.long_passages!r}: the {self.kind.name} reranker truncates "
                "passages to max_length, as FlagEmbedding does; windows are for the cross-encoders"
            )

    def _encoder_for(self, options: ScoringOptions) -> LLMPairEncoder:
        key = (options.max_length, options.resolved_query_max_length, options.prompt)
        with self._lock:
            encoder = self._encoders.get(key)
        if encoder is None:
            encoder = self._encoder.with_settings(
                max_length=key[0], query_max_length=key[1], prompt=options.prompt
            )
            limit = self.position_limit
            if limit is not None and encoder.longest > limit:
                raise ValueError(
                    f"max_length={options.max_length} (passage tokens) with query_max_length={key[1]} "
                    f"and the prompt makes pairs of up to {encoder.longest} tokens; the "
                    f"{self.kind.name} model has {limit} positions"
                )
            with self._lock:
                if len(self._encoders) < _ENCODERS_KEPT:
                    self._encoders[key] = encoder
        return encoder

    def _rows(
        self, ids: list[list[int]], query_lengths: list[int], prompt_lengths: list[int]
    ) -> Sequence[Any]:
        return ids


class _GemmaModel(DecoderModel):
    """v2-gemma: the ``Yes`` logit at each row's last token."""

    def __init__(self, *args: Any, yes_forward: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yes = yes_forward

    def forward(self, rows: Sequence[Any], options: ScoringOptions) -> torch.Tensor:
        """fp32 ``Yes`` logits ``[len(rows)]`` (the prompt is in the ids already)."""
        self.check_options(options)
        logits: torch.Tensor = self._yes(rows)
        return logits


class _MiniCPMModel(DecoderModel):
    """v2-minicpm-layerwise: one layer's score head at each row's last token."""

    model: MiniCPMLayerwise

    def check_options(self, options: ScoringOptions) -> None:
        """The shared checks, and ``cutoff_layers``: one layer that has a score head."""
        super().check_options(options)
        _one_layer(options.cutoff_layers, self.model.score_layers, self.kind.name)

    def forward(self, rows: Sequence[Any], options: ScoringOptions) -> torch.Tensor:
        """fp32 scores ``[len(rows)]`` of the chosen layer (default: the last)."""
        self.check_options(options)
        scores: torch.Tensor = self.model.scores(rows, cutoff_layers=options.cutoff_layers)
        return scores[0]


class _LightweightModel(DecoderModel):
    """v2.5-gemma2-lightweight: one layer's score, with optional passage-token compression."""

    model: LightweightGemma2

    def check_options(self, options: ScoringOptions) -> None:
        """The shared checks, ``cutoff_layers`` (one layer with a head) and ``compress_layers``."""
        super().check_options(options)
        _one_layer(options.cutoff_layers, self.model.score_layers, self.kind.name)
        layers = self.model.config.num_hidden_layers
        bad = [k for k in options.compress_layers or () if not 0 < k < layers]
        if bad:
            raise ValueError(
                f"compress_layers {bad}: passage tokens are merged before one of layers 1..{layers - 1} "
                f"of this {layers}-layer model (FlagEmbedding ignores other values)"
            )

    def forward(self, rows: Sequence[Any], options: ScoringOptions) -> torch.Tensor:
        """fp32 scores ``[len(rows)]`` of the chosen layer, passages compressed as the options say."""
        self.check_options(options)
        scores: torch.Tensor = self.model.scores(
            [list(row) for row in rows],
            query_lengths=[row.query_length for row in rows],
            prompt_lengths=[row.prompt_length for row in rows],
            cutoff_layers=options.cutoff_layers,
            compress_ratio=options.compress_ratio or 1,
            compress_layers=options.compress_layers or LIGHTWEIGHT_COMPRESS_LAYERS,
        )
        return scores[0]

    def _rows(
        self, ids: list[list[int]], query_lengths: list[int], prompt_lengths: list[int]
    ) -> Sequence[Any]:
        return [
            LightweightRow(row, query, prompt)
            for row, query, prompt in zip(ids, query_lengths, prompt_lengths, strict=True)
        ]


def _one_layer(layers: Sequence[int] | None, allowed: Sequence[int], kind: str) -> None:
    if layers is None:
        return
    if len(layers) != 1:
        raise ValueError(
            f"cutoff_layers={list(layers)}: the {kind} reranker gives one score per passage, so name "
            "one layer (FlagEmbedding returns one list of scores per layer; score once per layer)"
        )
    if layers[0] not in allowed:
        shown = list(allowed) if len(allowed) <= 8 else f"{allowed[0]} to {allowed[-1]}"
        raise ValueError(
            f"cutoff_layers={list(layers)}: layer {layers[0]} has no score head; this model scores "
            f"layers {shown}"
        )


def read_model_config(settings: LoadSettings) -> dict[str, Any]:
    """The raw ``config.json`` of ``settings.model`` (a folder or hub id), without running model code.

    Raises:
        ModelLoadError: the file cannot be found, fetched or parsed; the cause stays chained.
    """
    from transformers.utils.hub import cached_file

    try:
        path = cached_file(settings.model, "config.json", **_hub_kwargs(settings))
        if path is None:
            raise OSError(f"{settings.model} has no config.json")
        with open(path, encoding="utf-8") as file:
            spec = json.load(file)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_message(settings, exc)) from exc
    if not isinstance(spec, dict):
        raise ModelLoadError(
            f"could not load the reranker model {settings.model!r}: config.json is not an object"
        )
    return spec


def _hub_kwargs(settings: LoadSettings) -> dict[str, Any]:
    return {
        "revision": settings.revision,
        "token": settings.token,
        "cache_dir": settings.cache_dir,
        "local_files_only": settings.local_files_only,
    }


def _message(settings: LoadSettings, exc: BaseException) -> str:
    from huggingface_hub import constants

    offline = settings.local_files_only or bool(constants.HF_HUB_OFFLINE)
    return load_error_message(settings.model, exc, offline=offline)


class DecoderKind:
    """What the three decoder kinds share: detection, the ``trust_remote_code`` rule, tokenizer and load."""

    name: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]]
    llm: ClassVar[LLMKind]
    gpu_dtype: ClassVar[str] = "bfloat16"
    """The dtype ``dtype='auto'`` should mean on a GPU: Gemma-2's activations overflow float16."""

    @classmethod
    def matches(cls, model_config: Mapping[str, Any]) -> bool:
        """Whether ``model_config`` (a raw ``config.json``) is this kind's architecture."""
        return detect_llm_kind(model_config) is cls.llm

    @classmethod
    def load(cls, settings: LoadSettings, device: torch.device, dtype: torch.dtype) -> DecoderModel:
        """Load tokenizer and weights of ``settings.model`` onto ``device`` in ``dtype``.

        Raises:
            ModelLoadError: the files are missing or broken, the folder is another architecture, or
                the model declares custom code and ``trust_remote_code`` is not set.
            ValueError: ``settings.dtype`` is ``"int8"`` (a cross-encoder-only forward).
        """
        if settings.dtype == "int8":
            raise ValueError(
                f"dtype='int8' quantizes the cross-encoder's padding-free forward; the {cls.name} "
                "reranker runs in 'float32', 'float16' or 'bfloat16'"
            )
        check_model_name(settings.model, cache_dir=settings.cache_dir, revision=settings.revision)
        spec = read_model_config(settings)
        if not cls.matches(spec):
            found = spec.get("architectures") or spec.get("model_type")
            raise ModelLoadError(
                f"{settings.model!r} is {found}, not a {cls.name} reranker ({', '.join(cls.architectures)})"
            )
        if cls.llm.ships_remote_code and not settings.trust_remote_code:
            raise ModelLoadError(
                f"{settings.model!r} ({cls.name}) declares custom model code in its config.json "
                "(auto_map): pass trust_remote_code=True, as FlagEmbedding needs for it. This package "
                "loads the weights into transformers' own modules and runs none of that code."
            )
        from transformers import AutoTokenizer

        hub = _hub_kwargs(settings)
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                settings.model, trust_remote_code=settings.trust_remote_code, **hub
            )
            encoder = LLMPairEncoder.from_transformers(tokenizer, cls.llm)
            model = cls._load_model(settings, spec, dtype, hub)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(_message(settings, exc)) from exc
        model.to(device)
        model.eval()
        pad = tokenizer.pad_token_id
        limit = spec.get("max_position_embeddings")
        return cls._wrap(
            model,
            encoder,
            device=device,
            position_limit=int(limit) if isinstance(limit, int) else None,
            pad_id=int(pad) if pad is not None else 0,
        )

    @classmethod
    def _load_model(
        cls, settings: LoadSettings, spec: Mapping[str, Any], dtype: torch.dtype, hub: dict[str, Any]
    ) -> Any:
        from bge_rerank_integrations.llm_layerwise import load_layerwise_model

        return load_layerwise_model(settings.model, cls.llm.name, config=spec, dtype=dtype, **hub)

    @classmethod
    def _wrap(cls, model: Any, encoder: LLMPairEncoder, **facts: Any) -> DecoderModel:
        raise NotImplementedError


class GemmaKind(DecoderKind):
    """BAAI/bge-reranker-v2-gemma: a ``GemmaForCausalLM``, scored by its ``Yes`` logit."""

    name: ClassVar[str] = "v2-gemma"
    llm: ClassVar[LLMKind] = LLM_KINDS["v2-gemma"]
    architectures: ClassVar[tuple[str, ...]] = llm.architectures

    @classmethod
    def _load_model(
        cls, settings: LoadSettings, spec: Mapping[str, Any], dtype: torch.dtype, hub: dict[str, Any]
    ) -> Any:
        from transformers import AutoModelForCausalLM

        loaded: Any = AutoModelForCausalLM.from_pretrained(
            settings.model, dtype=dtype, output_loading_info=True, **hub
        )
        model, info = loaded
        missing = sorted(info.get("missing_keys", ()))
        if missing:  # random weights would score silently
            raise ModelLoadError(
                f"{settings.model!r} is not a complete {cls.name} checkpoint: it lacks "
                f"{', '.join(missing[:5])}"
            )
        return model

    @classmethod
    def _wrap(cls, model: Any, encoder: LLMPairEncoder, **facts: Any) -> DecoderModel:
        from bge_rerank_integrations.llm_forward import YesLogitForward

        yes = YesLogitForward(model, yes_id=encoder.yes_id, pad_id=facts["pad_id"])
        return _GemmaModel(cls.llm, model, encoder, yes_forward=yes, **facts)


class MiniCPMLayerwiseKind(DecoderKind):
    """BAAI/bge-reranker-v2-minicpm-layerwise: MiniCPM with a score head per layer from ``start_layer``."""

    name: ClassVar[str] = "v2-minicpm-layerwise"
    llm: ClassVar[LLMKind] = LLM_KINDS["v2-minicpm-layerwise"]
    architectures: ClassVar[tuple[str, ...]] = llm.architectures

    @classmethod
    def _wrap(cls, model: Any, encoder: LLMPairEncoder, **facts: Any) -> DecoderModel:
        return _MiniCPMModel(cls.llm, model, encoder, **facts)


class LightweightGemma2Kind(DecoderKind):
    """BAAI/bge-reranker-v2.5-gemma2-lightweight: Gemma-2 with layer heads and passage compression."""

    name: ClassVar[str] = "v2.5-gemma2-lightweight"
    llm: ClassVar[LLMKind] = LLM_KINDS["v2.5-gemma2-lightweight"]
    architectures: ClassVar[tuple[str, ...]] = llm.architectures

    @classmethod
    def _wrap(cls, model: Any, encoder: LLMPairEncoder, **facts: Any) -> DecoderModel:
        return _LightweightModel(cls.llm, model, encoder, **facts)
