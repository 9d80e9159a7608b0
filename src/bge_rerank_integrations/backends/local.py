"""The local backend: a ``transformers`` cross-encoder run with torch (with ``backends.packed``, the
only modules importing torch).

Pairs (made distinct by the ``Reranker``'s queue) are tokenized in one batched call, sorted by length
and cut into batches under a token budget. XLM-RoBERTa models (bge-reranker-v2-m3) run padding-free
(``backends.packed``: no pad tokens; on CPU at most 63 spare rows a pass); other models run padded
batches, where the budget counts padded tokens. Each batch runs once, in fp16 on CUDA and fp32 on
CPU by default; logits come back as fp32, in input order, copied to the host once a call. A CUDA
out-of-memory error splits the batch in two and retries instead of failing the call. Backends whose
settings load the same weights (``backends.weights``) share one copy of them and one device lock.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bge_rerank_integrations.backends.model_source import check_model_name, load_error_message
from bge_rerank_integrations.backends.weights import LoadedWeights, WeightsKey, shared_weights
from bge_rerank_integrations.batching import padded_length, plan_batches, plan_packed_batches
from bge_rerank_integrations.config import RerankerConfig, ScoringOptions
from bge_rerank_integrations.errors import ModelLoadError
from bge_rerank_integrations.tokenization import PairEncoder

if TYPE_CHECKING:
    import torch

    from bge_rerank_integrations.backends.packed import PackedForward

__all__ = ["NO_PASS_LIMIT", "ForwardStats", "LocalBackend", "available_devices", "resolve_device"]

logger = logging.getLogger(__name__)

NO_PASS_LIMIT = 1 << 40
"""``pass_tokens`` of a device that a pass of any batch budget keeps busy (GPUs)."""

# On CPU the padding-free forward runs a batch in parts of about this many tokens, so that the
# activations stay in the cache between the matrix multiplies: 2k tokens in fp32 and int8, 4k in
# bf16/fp16 (best of 1k-16k on the reduced subject, benchmarks/RESULTS.md).
_CPU_CHUNK_TOKENS = {"float32": 2048, "half": 4096, "int8": 2048}


def _cpu_chunk_tokens(dtype: str) -> int:
    """The CPU chunk size of the padding-free forward for a configured ``dtype`` (``"auto"`` is fp32)."""
    return _CPU_CHUNK_TOKENS[
        dtype if dtype == "int8" else "float32" if dtype in ("auto", "float32") else "half"
    ]


@dataclass
class ForwardStats:
    """Running totals of the work done by a backend's forward passes (for benchmarks and logs)."""

    pairs: int = 0
    real_tokens: int = 0
    """Tokens of the pairs themselves."""
    computed_tokens: int = 0
    """Tokens that went through the model's linear layers: padding included, when there is any."""
    forward_passes: int = 0


def resolve_device(device: str | None) -> torch.device:
    """The device to run on: the one asked for, else cuda, then mps, then cpu.

    Raises:
        ValueError: ``device`` is not a device name, or names a device this machine does not have
            (``"cuda"`` without CUDA, ``"cuda:7"`` with one GPU, ``"mps"`` off Apple silicon); the
            message lists the devices that are available.
    """
    import torch

    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = available_devices()
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"invalid device {device!r}: expected cpu, cuda, cuda:N, mps or xpu:N; "
            f"available: {', '.join(available)}"
        ) from None
    kinds = {name.partition(":")[0] for name in available}
    indexed = f"{parsed.type}:{parsed.index}"
    if parsed.type == "cpu" or (
        parsed.type in kinds and (parsed.index is None or indexed in available or indexed == "mps:0")
    ):
        return parsed
    raise ValueError(
        f"device {device!r} is not available on this machine{_why_unavailable(parsed)}; "
        f"available: {', '.join(available)}"
    )


def available_devices() -> list[str]:
    """The devices this process can run on: ``cpu``, then each CUDA GPU, mps and each XPU."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += [f"xpu:{i}" for i in range(xpu.device_count())]
    return found


def _why_unavailable(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        if not torch.backends.cuda.is_built():  # type: ignore[no-untyped-call]
            return " (this torch build has no CUDA support: install a CUDA build of torch)"
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return f" (it has {count} CUDA GPU{'s' if count != 1 else ''})"
    if device.type == "mps":
        return " (mps is the GPU of Apple silicon Macs, and this torch cannot use one here)"
    if device.type not in ("xpu", "cpu"):
        return f" (a reranker runs on cpu, cuda, mps or xpu, not {device.type})"
    return ""


class LocalBackend:
    """Loads the model with ``transformers`` on first use and scores pairs on one device."""

    def __init__(self, config: RerankerConfig, device: str | None = None) -> None:
        """Store the settings; nothing is loaded until :meth:`load` or the first score.

        ``device`` picks this replica's device when ``config.device`` lists several.
        """
        self.config = config
        self._device_name = device if device is not None else _single_device(config.device)
        self._load_lock = threading.Lock()
        self._device_lock = threading.Lock()  # one forward pass at a time on the device
        self._model: Any = None
        self._encoder: PairEncoder | None = None
        self._encoders: dict[tuple[int, int], PairEncoder] = {}  # per (max_length, query_max_length)
        self._position_limit: int | None = None
        self._device: torch.device | None = None
        self._pad_id = 0
        self._multiple = 1
        self._packed: PackedForward | None = None
        self._weights: LoadedWeights | None = None
        self.stats = ForwardStats()

    @property
    def is_loaded(self) -> bool:
        """Whether weights and tokenizer are in memory."""
        return self._model is not None

    @property
    def device(self) -> torch.device:
        """The device the model runs on (loads the model if needed)."""
        self.load()
        assert self._device is not None
        return self._device

    @property
    def pass_tokens(self) -> int:
        """On CPU one chunk (about 2k tokens already keep the cores busy); elsewhere no bound of the
        device's own (:data:`NO_PASS_LIMIT`): the call's batch budget decides."""
        try:
            device = self._device if self._device is not None else resolve_device(self._device_name)
        except ValueError:  # an invalid device name is reported by load(), with the model's context
            return NO_PASS_LIMIT
        if device.type != "cpu":
            return NO_PASS_LIMIT
        return _cpu_chunk_tokens(self.config.dtype)

    def load(self) -> None:
        """Load tokenizer and weights once; later calls return at once."""
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is None:
                self._load()

    def _load(self) -> None:
        cfg = self.config
        device = resolve_device(self._device_name)
        # Backends that differ only in how they score share the weights loaded for the first of them.
        weights = shared_weights(_weights_key(cfg, device), functools.partial(_load_weights, cfg, device))
        _check_max_length(cfg.max_length, weights.position_limit)
        self._position_limit = weights.position_limit
        self._encoders = {}
        self._encoder = weights.encoder
        self._pad_id = weights.pad_id
        self._multiple = 8 if device.type == "cuda" else 1
        # A view of the shared padding-free forward: its tuning (chunk size, attention) is this
        # backend's own, its weights are the shared ones.
        self._packed = copy.copy(weights.packed)
        self._device_lock = weights.lock  # one forward pass at a time on these weights, for all users
        self._device = weights.device
        self._weights = weights
        self._model = weights.model  # last: marks the backend as loaded

    def close(self) -> None:
        """Drop this backend's hold on the weights and tokenizer (a later call loads them again); idempotent.

        Waits for a forward pass in progress. The weights are freed once no other backend uses them
        (see :mod:`~.backends.weights`); on CUDA the freed memory goes back to the device.
        """
        with self._load_lock, self._device_lock:
            model, self._model = self._model, None
            device, self._device = self._device, None
            self._weights = None  # the weights go once no other backend refers to them
            self._encoder = None
            self._encoders = {}
            self._packed = None
        if model is not None and device is not None and device.type == "cuda":
            import torch

            del model
            torch.cuda.empty_cache()

    def encoder(self, options: ScoringOptions) -> PairEncoder:
        """The pair encoder of ``options``' lengths (loads the model if needed), made once per lengths.

        Raises:
            ValueError: ``options.max_length`` exceeds the model's position embeddings.
        """
        self.load()
        lengths = (options.max_length, options.resolved_query_max_length)
        found = self._encoders.get(lengths)
        if found is None:
            base = self._encoder
            assert base is not None
            _check_max_length(options.max_length, self._position_limit)
            found = base.with_lengths(max_length=lengths[0], query_max_length=lengths[1])
            self._encoders[lengths] = found  # a race makes an equal copy: harmless
        return found

    def check(self, options: ScoringOptions) -> None:
        """Load the model if needed and raise ``ValueError`` if it cannot score under ``options``."""
        self.encoder(options)

    def encode(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> list[list[int]]:
        """The token ids this backend scores for ``pairs`` under ``options``: one list per pair, or in
        ``long_passages="window"`` mode one per window, the pairs' windows in order."""
        encoder = self.encoder(options)
        if options.long_passages == "window":
            return encoder.encode_windows(
                pairs, overlap=options.resolved_window_overlap, max_windows=options.max_windows
            )[0]
        return encoder.encode(pairs)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> list[float]:
        """Raw logits of ``pairs`` in input order, scored under ``options``; each batch runs exactly once."""
        import torch

        if not pairs:
            return []
        encoder = self.encoder(options)
        if options.long_passages == "window":
            ids, owners = encoder.encode_windows(
                pairs, overlap=options.resolved_window_overlap, max_windows=options.max_windows
            )
        else:
            ids, owners = encoder.encode(pairs), None
        scores: list[float] = [0.0] * len(ids)
        lengths = [len(x) for x in ids]
        if self._packed is not None:  # no padding: a batch costs its real tokens
            plan = plan_packed_batches(lengths, options.max_batch_tokens)
        else:
            plan = plan_batches(lengths, options.max_batch_tokens, multiple=self._multiple)
        # Logits stay on the device until every batch is queued: on a GPU the host prepares the next
        # batch while the device still runs the last one, and the call waits for the device once.
        logits = [self._run_splitting([ids[i] for i in batch]) for batch in plan]
        values: list[float] = torch.cat(logits).cpu().tolist()
        for i, score in zip(itertools.chain.from_iterable(plan), values, strict=True):
            scores[i] = score
        if owners is None:
            return scores
        best = [-math.inf] * len(pairs)  # a passage scores as its most relevant window
        for owner, score in zip(owners, scores, strict=True):
            best[owner] = max(best[owner], score)
        return best

    def _run_splitting(self, batch: list[list[int]]) -> torch.Tensor:
        """Forward ``batch``; on out-of-memory, halve it and retry each half."""
        import torch

        try:
            return self._forward(batch)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            logger.warning("out of memory on a batch of %d pairs; splitting it and retrying", len(batch))
            if self._device is not None and self._device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(batch) // 2
            return torch.cat([self._run_splitting(batch[:half]), self._run_splitting(batch[half:])])

    def _forward(self, batch: list[list[int]]) -> torch.Tensor:
        """One forward pass, padding-free where the model allows, else over right-padded ids.

        Returns the fp32 logits ``[len(batch)]``, still on the device.
        """
        import torch

        real = sum(len(x) for x in batch)
        if self._packed is not None:
            with self._device_lock, torch.inference_mode():
                packed = self._packed(batch)
                computed = self._packed.computed_rows
            self._count(len(batch), real, computed)
            return packed
        width = padded_length(max(len(x) for x in batch), self._multiple)
        padded = [x + [self._pad_id] * (width - len(x)) for x in batch]
        mask = [[1] * len(x) + [0] * (width - len(x)) for x in batch]
        input_ids = torch.tensor(padded, dtype=torch.long)
        attention_mask = torch.tensor(mask, dtype=torch.long)
        device = self._device
        assert device is not None
        if device.type == "cuda":
            input_ids = input_ids.pin_memory().to(device, non_blocking=True)
            attention_mask = attention_mask.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        with self._device_lock, torch.inference_mode():
            logits = self._model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        self._count(len(batch), real, width * len(batch))
        return logits  # type: ignore[no-any-return]

    def _count(self, pairs: int, real: int, computed: int) -> None:
        stats = self.stats
        stats.pairs += pairs
        stats.real_tokens += real
        stats.computed_tokens += computed
        stats.forward_passes += 1


def _load_weights(cfg: RerankerConfig, device: torch.device) -> LoadedWeights:
    """Load tokenizer and weights of ``cfg`` onto ``device`` (what :func:`shared_weights` shares)."""
    check_model_name(cfg.model, cache_dir=cfg.cache_dir, revision=cfg.revision)  # before the hub

    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    if cfg.dtype == "int8" and device.type != "cpu":
        raise ValueError(
            f"dtype='int8' runs on CPU only (dynamic int8 linear layers); on {device} use 'float16' "
            "(the default there) or 'bfloat16'"
        )
    dtype = _torch_dtype(cfg.dtype, device)
    hub_kwargs: dict[str, Any] = {
        "revision": cfg.revision,
        "token": cfg.token,
        "cache_dir": cfg.cache_dir,
        "local_files_only": cfg.local_files_only,
        "trust_remote_code": cfg.trust_remote_code,
    }
    try:
        # The config first: it is small, and a wrong model or max_length fails before 2 GB load.
        model_cfg = AutoConfig.from_pretrained(cfg.model, **hub_kwargs)
    except (OSError, ValueError, KeyError) as exc:  # hub, file and config errors all land here
        raise ModelLoadError(_load_error_message(cfg, exc)) from exc
    if getattr(model_cfg, "num_labels", None) != 1:
        raise ModelLoadError(
            f"{cfg.model!r} has {model_cfg.num_labels} output labels; a reranker (cross-encoder) "
            "has exactly one relevance logit"
        )
    limit = _position_limit(model_cfg)
    _check_max_length(cfg.max_length, limit)
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model, **hub_kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(
            cfg.model, config=model_cfg, dtype=dtype, **hub_kwargs
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # missing or mismatched files
        raise ModelLoadError(_load_error_message(cfg, exc)) from exc

    encoder = PairEncoder.from_transformers(
        tokenizer, max_length=cfg.max_length, query_max_length=cfg.resolved_query_max_length
    )
    pad_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    packed = _packed_forward(model, device, cfg.dtype)
    logger.info("loaded %s on %s in %s", cfg.model, device, dtype)
    return LoadedWeights(
        model=model,
        tokenizer=tokenizer,
        encoder=encoder,
        device=device,
        pad_id=int(pad_id) if pad_id is not None else 0,
        packed=packed,
        position_limit=limit,
    )


def _weights_key(cfg: RerankerConfig, device: torch.device) -> WeightsKey:
    """What decides the weights ``cfg`` loads on ``device``: equal keys share one load."""
    return WeightsKey(
        model=cfg.model,
        revision=cfg.revision,
        token=cfg.token,
        cache_dir=cfg.cache_dir,
        local_files_only=cfg.local_files_only,
        trust_remote_code=cfg.trust_remote_code,
        device=_device_key(device),
        dtype=_dtype_name(cfg.dtype, device),
    )


def _device_key(device: torch.device) -> str:
    """``device`` with its index, so that ``"cuda"`` and ``"cuda:0"`` (the current GPU) compare equal."""
    import torch

    if device.type == "cpu" or device.index is not None:
        return str(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()}"
    xpu = getattr(torch, "xpu", None)
    if device.type == "xpu" and xpu is not None:
        return f"xpu:{xpu.current_device()}"
    return f"{device.type}:0"


def _dtype_name(name: str, device: torch.device) -> str:
    """The configured dtype with ``"auto"`` resolved for ``device`` (as :func:`_torch_dtype` does)."""
    if name == "auto":
        return "float16" if device.type == "cuda" else "float32"
    return name


def _check_max_length(max_length: int, limit: int | None) -> None:
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the model's limit of {limit} tokens")


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
    chunk = _cpu_chunk_tokens(dtype) if device.type == "cpu" else None
    return PackedForward(model, chunk_tokens=chunk, int8=dtype == "int8")


def _single_device(device: str | tuple[str, ...] | None) -> str | None:
    if isinstance(device, tuple):
        if len(device) != 1:
            raise ValueError("LocalBackend runs on one device: pass the replica's device explicitly")
        return device[0]
    return device


def _load_error_message(config: RerankerConfig, exc: BaseException) -> str:
    """One readable paragraph about a failed load, instead of a hub traceback (which stays chained)."""
    from huggingface_hub import constants

    offline = config.local_files_only or bool(constants.HF_HUB_OFFLINE)
    return load_error_message(config.model, exc, offline=offline)


def _torch_dtype(name: str, device: torch.device) -> torch.dtype:
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name == "int8":  # fp32 weights, quantized by the padding-free forward
        return torch.float32
    dtype: torch.dtype = getattr(torch, name)
    return dtype


def _position_limit(model_config: Any) -> int | None:
    """Longest input the position embeddings allow (RoBERTa-style models reserve pad_id + 1 slots)."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions is None:
        return None
    if "roberta" in str(getattr(model_config, "model_type", "")):
        return int(positions) - int(getattr(model_config, "pad_token_id", 1) or 0) - 1
    return int(positions)
