"""The XLM-RoBERTa-style cross-encoder kind (bge-reranker-v2-m3): the reference pair layout, one logit.

Loads with ``AutoModelForSequenceClassification`` (exactly one label), builds ``<s> Q </s></s> P </s>``
with :class:`~.tokenization.PairEncoder`, and runs padding-free (``backends.packed``: no pad tokens;
on CPU at most 63 spare rows a pass) where ``packed_support`` allows, else right-padded batches.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from bge_rerank_integrations.batching import padded_length
from bge_rerank_integrations.errors import ModelLoadError
from bge_rerank_integrations.kinds.base import Encoded
from bge_rerank_integrations.tokenization import PairEncoder

if TYPE_CHECKING:
    import torch

    from bge_rerank_integrations.backends.packed import PackedForward
    from bge_rerank_integrations.config import LoadSettings, ScoringOptions

__all__ = ["CPU_CHUNK_TOKENS", "CrossEncoderKind", "CrossEncoderModel", "cpu_chunk_tokens"]

logger = logging.getLogger(__name__)

CPU_CHUNK_TOKENS = {"float32": 2048, "half": 4096, "int8": 2048}
"""On CPU the padding-free forward runs a batch in parts of about this many tokens, so that the
activations stay in the cache between the matrix multiplies: 2k tokens in fp32 and int8, 4k in
bf16/fp16 (best of 1k-16k on the reduced subject, benchmarks/RESULTS.md)."""


def cpu_chunk_tokens(dtype: str) -> int:
    """The CPU chunk size of the padding-free forward for a configured ``dtype`` (``"auto"`` is fp32)."""
    return CPU_CHUNK_TOKENS[
        dtype if dtype == "int8" else "float32" if dtype in ("auto", "float32") else "half"
    ]


class CrossEncoderKind:
    """XLM-RoBERTa/RoBERTa sequence classifiers with one relevance logit."""

    name: ClassVar[str] = "cross-encoder"
    architectures: ClassVar[tuple[str, ...]] = (
        "XLMRobertaForSequenceClassification",
        "RobertaForSequenceClassification",
    )
    model_types: ClassVar[tuple[str, ...]] = ("xlm-roberta", "roberta")
    gpu_dtype: ClassVar[str] = "float16"
    """float16 on a GPU, as the reference's ``use_fp16=True``."""
    """The ``model_type`` values served when ``config.json`` lists no ``architectures``."""

    @classmethod
    def matches(cls, model_config: Mapping[str, Any]) -> bool:
        """By ``architectures``, else (none listed) by ``model_type``."""
        architectures = model_config.get("architectures") or ()
        if architectures:
            return any(name in cls.architectures for name in architectures)
        return model_config.get("model_type") in cls.model_types

    @classmethod
    def load(cls, settings: LoadSettings, device: torch.device, dtype: torch.dtype) -> CrossEncoderModel:
        """Tokenizer and classifier of ``settings.model`` on ``device`` (see :class:`~.base.ModelKind`)."""
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        hub_kwargs: dict[str, Any] = {
            "revision": settings.revision,
            "token": settings.token,
            "cache_dir": settings.cache_dir,
            "local_files_only": settings.local_files_only,
            "trust_remote_code": settings.trust_remote_code,
        }
        try:
            model_cfg = AutoConfig.from_pretrained(settings.model, **hub_kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(_load_error_message(settings, exc)) from exc
        if getattr(model_cfg, "num_labels", None) != 1:
            raise ModelLoadError(
                f"{settings.model!r} has {model_cfg.num_labels} output labels; a reranker (cross-encoder) "
                "has exactly one relevance logit"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(settings.model, **hub_kwargs)
            module = AutoModelForSequenceClassification.from_pretrained(
                settings.model, config=model_cfg, dtype=dtype, **hub_kwargs
            )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # missing or mismatched files
            raise ModelLoadError(_load_error_message(settings, exc)) from exc
        limit = _position_limit(model_cfg)
        encoder = PairEncoder.from_transformers(
            tokenizer, max_length=_MIN_LENGTHS[0], query_max_length=_MIN_LENGTHS[1]
        )
        module.to(device)
        module.eval()
        packed = _packed_forward(module, device, settings.dtype)
        logger.info("loaded %s on %s in %s", settings.model, device, dtype)
        pad_id = tokenizer.pad_token_id
        return CrossEncoderModel(
            module=module,
            tokenizer=tokenizer,
            encoder=encoder,
            device=device,
            pad_id=int(pad_id) if pad_id is not None else 0,
            packed=packed,
            position_limit=limit,
        )


_MIN_LENGTHS = (16, 1)  # the base encoder's lengths; each call's options take with_lengths of it


class CrossEncoderModel:
    """A loaded cross-encoder: the shared weights, and this view's padding-free forward (or ``None``).

    :meth:`view` gives each backend its own view (its own tuning of the padding-free forward, or the
    padded forward) on the same weights and tokenizer.
    """

    def __init__(
        self,
        *,
        module: Any,
        tokenizer: Any,
        encoder: PairEncoder,
        device: torch.device,
        pad_id: int,
        packed: PackedForward | None,
        position_limit: int | None,
    ) -> None:
        """Wrap what :meth:`CrossEncoderKind.load` loaded."""
        self.module = module
        """The ``transformers`` sequence classifier, in eval mode on :attr:`device`."""
        self.tokenizer = tokenizer
        self.encoder = encoder
        """The pair encoder; each call's lengths take :meth:`~.PairEncoder.with_lengths` of it."""
        self._device = device
        self.pad_id = pad_id
        self.packed = packed
        """This view's padding-free forward, or ``None`` where it runs padded batches."""
        self._supported = packed  # the load's, kept by padded views so that a view can go back
        self.position_limit = position_limit
        """Longest pair the position embeddings allow (``None``: no limit known)."""
        self.multiple = 8 if device.type == "cuda" else 1
        """Padded batches are as wide as a multiple of this (tensor-core friendly shapes on GPU)."""
        self.last_computed_tokens = 0
        self._encoders: dict[tuple[int, int], PairEncoder] = {}

    @property
    def device(self) -> torch.device:
        """Where the forward runs."""
        return self._device

    @property
    def padding_free(self) -> bool:
        """Whether this view runs the padding-free forward."""
        return self.packed is not None

    def view(self, padding_free: bool | None = None) -> CrossEncoderModel:
        """A view for one backend: the same weights, its own forward tuning; ``padding_free`` as in
        :class:`~.backends.local.LocalBackend`.

        Raises:
            ValueError: ``padding_free=True`` and the model cannot run padding-free (the reason named).
        """
        own = copy.copy(self)
        own._encoders = {}
        if padding_free is False:
            own.packed = None
        elif self._supported is None:
            if padding_free:
                from bge_rerank_integrations.backends.packed import packed_support

                reason = packed_support(self.module)
                raise ValueError(f"padding_free=True, but this model cannot run padding-free: {reason}")
            own.packed = None
        else:
            own.packed = copy.copy(self._supported)
        return own

    def encode(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> Encoded:
        """Reference-exact ids of ``pairs`` (one row per window in ``long_passages="window"`` mode)."""
        given = sorted(options.kind_options())
        if given:
            raise ValueError(f"{', '.join(given)}: the cross-encoder kind takes no such option")
        encoder = self._encoder(options)
        owners: list[int] | None = None
        if options.long_passages == "window":
            rows, owners = encoder.encode_windows(
                pairs, overlap=options.resolved_window_overlap, max_windows=options.max_windows
            )
        else:
            rows = encoder.encode(pairs)
        return Encoded(rows=rows, lengths=[len(x) for x in rows], owners=owners)

    def forward(self, rows: Sequence[Any], options: ScoringOptions) -> torch.Tensor:
        """One pass: padding-free where this view allows, else over right-padded ids; fp32 logits."""
        import torch

        batch: list[list[int]] = list(rows)
        if self.packed is not None:
            logits = self.packed(batch)
            self.last_computed_tokens = self.packed.computed_rows
            return logits
        width = padded_length(max(len(x) for x in batch), self.multiple)
        padded = [x + [self.pad_id] * (width - len(x)) for x in batch]
        mask = [[1] * len(x) + [0] * (width - len(x)) for x in batch]
        input_ids = torch.tensor(padded, dtype=torch.long)
        attention_mask = torch.tensor(mask, dtype=torch.long)
        device = self._device
        if device.type == "cuda":
            input_ids = input_ids.pin_memory().to(device, non_blocking=True)
            attention_mask = attention_mask.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        out = self.module(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        self.last_computed_tokens = width * len(batch)
        return out  # type: ignore[no-any-return]

    def _encoder(self, options: ScoringOptions) -> PairEncoder:
        lengths = (options.max_length, options.resolved_query_max_length)
        found = self._encoders.get(lengths)
        if found is None:
            limit = self.position_limit
            if limit is not None and options.max_length > limit:
                raise ValueError(
                    f"max_length={options.max_length} exceeds the model's limit of {limit} tokens"
                )
            found = self.encoder.with_lengths(max_length=lengths[0], query_max_length=lengths[1])
            self._encoders[lengths] = found  # a race makes an equal copy: harmless
        return found


def _packed_forward(model: Any, device: torch.device, dtype: str) -> PackedForward | None:
    """The padding-free forward for ``model``, or ``None`` (with the reason logged) if it does not fit.

    ``dtype`` is the configured one; ``"int8"`` needs this forward (it quantizes its linear layers).
    """
    from bge_rerank_integrations.backends.packed import PackedForward, packed_support

    reason = packed_support(model)
    if reason is not None:
        if dtype == "int8":
            raise ValueError(
                f"dtype='int8' needs the padding-free forward, which this model cannot use: {reason}"
            )
        logger.info("using padded forward passes: %s", reason)
        return None
    chunk = cpu_chunk_tokens(dtype) if device.type == "cpu" else None
    return PackedForward(model, chunk_tokens=chunk, int8=dtype == "int8")


def _position_limit(model_config: Any) -> int | None:
    """Longest input the position embeddings allow (RoBERTa-style models reserve pad_id + 1 slots)."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions is None:
        return None
    if getattr(model_config, "model_type", "") in CrossEncoderKind.model_types:
        return int(positions) - int(getattr(model_config, "pad_token_id", 1) or 0) - 1
    return int(positions)


def _load_error_message(settings: LoadSettings, exc: BaseException) -> str:
    from huggingface_hub import constants

    from bge_rerank_integrations.backends.model_source import load_error_message

    offline = settings.local_files_only or bool(constants.HF_HUB_OFFLINE)
    return load_error_message(settings.model, exc, offline=offline)
