"""The local backend: a model kind (``kinds``: loading, pair layout, forward) run with torch on one device.

Pairs (made distinct by the queue) become the kind's rows, sorted by length and cut into batches under
the call's token budget: real tokens where the kind's forward is padding-free (the XLM-RoBERTa
cross-encoder's), padded tokens otherwise. Each batch runs once, in fp16 on CUDA and fp32 on CPU by
default; logits come back as fp32, in input order, copied to the host once a call. A CUDA
out-of-memory error splits the batch in two and retries instead of failing the call. Backends whose
settings load the same weights (``backends.weights``) share one copy of them and one device lock.
"""

from __future__ import annotations

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
from bge_rerank_integrations.batching import plan_batches, plan_packed_batches
from bge_rerank_integrations.config import RerankerConfig, ScoringOptions
from bge_rerank_integrations.errors import ModelLoadError
from bge_rerank_integrations.kinds import ModelKind, ModelView, kind_for
from bge_rerank_integrations.kinds.cross_encoder import cpu_chunk_tokens

if TYPE_CHECKING:
    import torch

    from bge_rerank_integrations.kinds.base import LoadedModel

__all__ = [
    "NO_PASS_LIMIT",
    "ForwardStats",
    "LocalBackend",
    "available_devices",
    "resolve_device",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

NO_PASS_LIMIT = 1 << 40
"""``pass_tokens`` of a device that a pass of any batch budget keeps busy (GPUs)."""


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
    """One model replica: loads its model kind on first use and scores pairs on one device.

    The kind (:mod:`~bge_rerank_integrations.kinds`) owns the pair layout and the forward; this
    backend does what every kind shares: batches by length under the call's token budget, each batch
    run once, an out-of-memory split, the window maximum, input order and the forward statistics.
    """

    def __init__(
        self, config: RerankerConfig, device: str | None = None, *, padding_free: bool | None = None
    ) -> None:
        """Store the settings; nothing is loaded until :meth:`load` or the first score.

        ``device`` picks this replica's device when ``config.device`` lists several. ``padding_free``:
        ``None`` runs the padding-free forward where the model allows it, ``False`` always padded
        batches (the ``transformers`` forward), ``True`` padding-free or a ``ValueError`` at load.
        """
        if config.dtype == "int8" and padding_free is False:  # int8 layers exist on that forward only
            raise ValueError("dtype='int8' runs padding-free only; it cannot take padding_free=False")
        self.config = config
        self.padding_free = padding_free
        self._device_name = device if device is not None else _single_device(config.device)
        self._load_lock = threading.Lock()
        self._device_lock = threading.Lock()  # one forward pass at a time on the device
        self._model: LoadedModel | None = None
        self._weights: LoadedWeights | None = None
        self.stats = ForwardStats()

    def __reduce__(self) -> tuple[Any, ...]:
        """A copy is a new, unloaded backend with the same settings, device and ``padding_free``."""
        rebuild = functools.partial(type(self), padding_free=self.padding_free)
        return (rebuild, (self.config, self._device_name))

    @property
    def is_loaded(self) -> bool:
        """Whether weights and tokenizer are in memory."""
        return self._model is not None

    @property
    def model(self) -> LoadedModel:
        """This backend's view of the loaded model (loads it if needed): shared weights, own tuning."""
        self.load()
        model = self._model
        assert model is not None
        return model

    @property
    def device(self) -> torch.device:
        """The device the model runs on (loads the model if needed)."""
        return self.model.device

    @property
    def pass_tokens(self) -> int:
        """On CPU one chunk (about 2k tokens already keep the cores busy); elsewhere no bound of the
        device's own (:data:`NO_PASS_LIMIT`): the call's batch budget decides."""
        try:
            device = self._model.device if self._model is not None else resolve_device(self._device_name)
        except ValueError:  # an invalid device name is reported by load(), with the model's context
            return NO_PASS_LIMIT
        if device.type != "cpu":
            return NO_PASS_LIMIT
        return cpu_chunk_tokens(self.config.dtype)

    def load(self) -> None:
        """Load tokenizer and weights once; later calls return at once.

        Raises:
            ModelLoadError: the model cannot be found, or no model kind serves its architecture.
            ValueError: the settings' scoring options do not fit the model (``max_length``), or
                ``padding_free=True`` and it cannot run padding-free.
        """
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is None:
                self._load()

    def _load(self) -> None:
        cfg = self.config
        device = resolve_device(self._device_name)
        kind = _model_kind(cfg, device)
        dtype = resolve_dtype(cfg.dtype, device, kind)
        # Backends that differ only in how they score share the weights loaded for the first of them.
        weights = shared_weights(
            _weights_key(cfg, device, dtype), functools.partial(_load_weights, cfg, kind, device, dtype)
        )
        model = _view(weights.model, self.padding_free)
        model.encode([], cfg.scoring)  # refuses options the model cannot score (a max_length too long)
        self._device_lock = weights.lock  # one forward pass at a time on these weights, for all users
        self._weights = weights
        self._model = model  # last: marks the backend as loaded

    def close(self) -> None:
        """Drop this backend's hold on the weights and tokenizer (a later call loads them again); idempotent.

        Waits for a forward pass in progress. The weights are freed once no other backend uses them
        (see :mod:`~.backends.weights`); on CUDA the freed memory goes back to the device.
        """
        with self._load_lock, self._device_lock:
            model, self._model = self._model, None
            self._weights = None  # the weights go once no other backend refers to them
        if model is not None and model.device.type == "cuda":
            import torch

            del model
            torch.cuda.empty_cache()

    def check(self, options: ScoringOptions) -> None:
        """Load the model if needed and raise ``ValueError`` if it cannot score under ``options``."""
        self.model.encode([], options)

    def encode(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> list[list[int]]:
        """The token ids this backend scores for ``pairs`` under ``options``: one list per pair, or in
        ``long_passages="window"`` mode one per window, the pairs' windows in order."""
        return [list(row) for row in self.model.encode(pairs, options).rows]

    def score_pairs(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> list[float]:
        """Raw logits of ``pairs`` in input order, scored under ``options``; each batch runs exactly once."""
        import torch

        if not pairs:
            return []
        model = self.model
        encoded = model.encode(pairs, options)
        rows, lengths = encoded.rows, list(encoded.lengths)
        if model.padding_free:  # no padding: a batch costs its real tokens
            plan = plan_packed_batches(lengths, options.max_batch_tokens)
        else:
            multiple = 8 if model.device.type == "cuda" else 1
            plan = plan_batches(lengths, options.max_batch_tokens, multiple=multiple)
        # Logits stay on the device until every batch is queued: on a GPU the host prepares the next
        # batch while the device still runs the last one, and the call waits for the device once.
        logits = [self._run_splitting(model, [rows[i] for i in batch], options) for batch in plan]
        values: list[float] = torch.cat(logits).cpu().tolist()
        scores: list[float] = [0.0] * len(rows)
        for i, score in zip(itertools.chain.from_iterable(plan), values, strict=True):
            scores[i] = score
        if encoded.owners is None:
            return scores
        best = [-math.inf] * len(pairs)  # a passage scores as its most relevant window
        for owner, score in zip(encoded.owners, scores, strict=True):
            best[owner] = max(best[owner], score)
        return best

    def _run_splitting(self, model: LoadedModel, batch: list[Any], options: ScoringOptions) -> torch.Tensor:
        """Forward ``batch``; on out-of-memory, halve it and retry each half."""
        import torch

        try:
            return self._forward(model, batch, options)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            logger.warning("out of memory on a batch of %d pairs; splitting it and retrying", len(batch))
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(batch) // 2
            return torch.cat(
                [
                    self._run_splitting(model, batch[:half], options),
                    self._run_splitting(model, batch[half:], options),
                ]
            )

    def _forward(self, model: LoadedModel, batch: list[Any], options: ScoringOptions) -> torch.Tensor:
        """One pass of the kind's forward, one at a time on these weights; fp32 logits on the device."""
        import torch

        real = sum(len(x) for x in batch)
        with self._device_lock, torch.inference_mode():
            logits = model.forward(batch, options)
            if isinstance(model, ModelView):
                computed = model.last_computed_tokens
            else:
                computed = real if model.padding_free else len(batch) * max(len(x) for x in batch)
        stats = self.stats
        stats.pairs += len(batch)
        stats.real_tokens += real
        stats.computed_tokens += computed
        stats.forward_passes += 1
        return logits


def _view(model: LoadedModel, padding_free: bool | None) -> LoadedModel:
    """``model`` as one backend runs it (see ``LocalBackend(padding_free=...)``)."""
    if isinstance(model, ModelView):
        return model.view(padding_free)
    if padding_free is not None and padding_free != model.padding_free:
        mode = "padding-free" if model.padding_free else "padded"
        raise ValueError(f"padding_free={padding_free}, but this model kind runs {mode} batches only")
    return model


def _model_kind(cfg: RerankerConfig, device: torch.device) -> type[ModelKind]:
    """The kind serving ``cfg.model``, read off its raw ``config.json`` (small: before any weights)."""
    check_model_name(cfg.model, cache_dir=cfg.cache_dir, revision=cfg.revision)  # before the hub

    from transformers import PretrainedConfig

    if cfg.dtype == "int8" and device.type != "cpu":
        raise ValueError(
            f"dtype='int8' runs on CPU only (dynamic int8 linear layers); on {device} use 'float16' "
            "(the default there) or 'bfloat16'"
        )
    try:
        raw, _ = PretrainedConfig.get_config_dict(
            cfg.model,
            revision=cfg.revision,
            token=cfg.token,
            cache_dir=cfg.cache_dir,
            local_files_only=cfg.local_files_only,
        )
    except (OSError, ValueError, KeyError) as exc:  # hub, file and config errors all land here
        raise ModelLoadError(_load_error_message(cfg, exc)) from exc
    return kind_for(raw, cfg.model)


def _load_weights(
    cfg: RerankerConfig, kind: type[ModelKind], device: torch.device, dtype: str
) -> LoadedWeights:
    """Load the model of ``cfg`` onto ``device`` with its kind (what :func:`shared_weights` shares)."""
    return LoadedWeights(model=kind.load(cfg.load_settings, device, _torch_dtype(dtype)))


def _weights_key(cfg: RerankerConfig, device: torch.device, dtype: str) -> WeightsKey:
    """What decides the weights ``cfg`` loads on ``device`` in ``dtype``: equal keys share one load."""
    return WeightsKey(
        model=cfg.model,
        revision=cfg.revision,
        token=cfg.token,
        cache_dir=cfg.cache_dir,
        local_files_only=cfg.local_files_only,
        trust_remote_code=cfg.trust_remote_code,
        device=_device_key(device),
        dtype=dtype,
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


def resolve_dtype(dtype: str, device: torch.device, kind: type[ModelKind]) -> str:
    """The dtype a model of ``kind`` loads in on ``device``: ``"auto"`` is the kind's GPU dtype on
    CUDA (float16 for cross-encoders, bfloat16 for the LLM rerankers, whose activations overflow
    float16) and float32 elsewhere; any other setting is taken as it is."""
    if dtype == "auto":
        return kind.gpu_dtype if device.type == "cuda" else "float32"
    return dtype


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


def _torch_dtype(name: str) -> torch.dtype:
    """The torch dtype the weights load in for a resolved dtype name (int8: fp32, quantized later)."""
    import torch

    if name == "int8":  # fp32 weights, quantized by the padding-free forward
        return torch.float32
    dtype: torch.dtype = getattr(torch, name)
    return dtype
