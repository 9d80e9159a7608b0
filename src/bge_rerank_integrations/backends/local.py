"""The local backend: a ``transformers`` cross-encoder run with torch (with ``backends.packed``, the
only modules importing torch).

Pairs (made distinct by the ``Reranker``'s queue) are tokenized in one batched call, sorted by length
and cut into batches under a token budget. XLM-RoBERTa models (bge-reranker-v2-m3) run padding-free
(``backends.packed``: no pad tokens; on CPU at most 63 spare rows a pass); other models run padded
batches, where the budget counts padded tokens. Each batch runs once, in fp16 on CUDA and fp32 on
CPU by default; logits come back as fp32, in input order, copied to the host once a call. A CUDA
out-of-memory error splits the batch in two and retries instead of failing the call.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bge_rerank_integrations.batching import padded_length, plan_batches, plan_packed_batches
from bge_rerank_integrations.config import RerankerConfig
from bge_rerank_integrations.errors import ModelLoadError
from bge_rerank_integrations.tokenization import PairEncoder

if TYPE_CHECKING:
    import torch

    from bge_rerank_integrations.backends.packed import PackedForward

__all__ = ["ForwardStats", "LocalBackend", "resolve_device"]

logger = logging.getLogger(__name__)

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


_LOCAL_FOLDER_HINT = (
    "If the Hugging Face hub is unreachable, download the model once where it is reachable "
    "(for example `hf download BAAI/bge-reranker-v2-m3 --local-dir ./bge-reranker-v2-m3`) and pass "
    "that folder as the model, or pass local_files_only=True to use an existing cache."
)


def resolve_device(device: str | None) -> torch.device:
    """The device to run on: the one asked for, else cuda, then mps, then cpu."""
    import torch

    if device is not None:
        try:
            return torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"invalid device {device!r}: {exc}") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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
        self._device: torch.device | None = None
        self._pad_id = 0
        self._multiple = 1
        self._packed: PackedForward | None = None
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
        """On CPU one chunk (about 2k tokens already keep the cores busy); elsewhere the batch budget."""
        try:
            device = self._device if self._device is not None else resolve_device(self._device_name)
        except ValueError:  # an invalid device name is reported by load(), with the model's context
            return self.config.max_batch_tokens
        if device.type != "cpu":
            return self.config.max_batch_tokens
        return min(_cpu_chunk_tokens(self.config.dtype), self.config.max_batch_tokens)

    def load(self) -> None:
        """Load tokenizer and weights once; later calls return at once."""
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is None:
                self._load()

    def _load(self) -> None:
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        cfg = self.config
        device = resolve_device(self._device_name)
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
            raise ModelLoadError(_load_error_message(cfg.model, exc)) from None
        if getattr(model_cfg, "num_labels", None) != 1:
            raise ModelLoadError(
                f"{cfg.model!r} has {model_cfg.num_labels} output labels; a reranker (cross-encoder) "
                "has exactly one relevance logit"
            )
        limit = _position_limit(model_cfg)
        if limit is not None and cfg.max_length > limit:
            raise ValueError(f"max_length={cfg.max_length} exceeds the model's limit of {limit} tokens")
        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.model, **hub_kwargs)
            model = AutoModelForSequenceClassification.from_pretrained(
                cfg.model, config=model_cfg, dtype=dtype, **hub_kwargs
            )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # missing or mismatched files
            raise ModelLoadError(_load_error_message(cfg.model, exc)) from None

        self._encoder = PairEncoder.from_transformers(
            tokenizer, max_length=cfg.max_length, query_max_length=cfg.resolved_query_max_length
        )
        pad_id = tokenizer.pad_token_id
        self._pad_id = int(pad_id) if pad_id is not None else 0
        self._multiple = 8 if device.type == "cuda" else 1
        model.to(device)
        model.eval()
        self._packed = _packed_forward(model, device, cfg.dtype)
        self._device = device
        logger.info("loaded %s on %s in %s", cfg.model, device, dtype)
        self._model = model  # last: marks the backend as loaded

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Raw logits of ``pairs`` in input order; each batch runs exactly once."""
        import torch

        if not pairs:
            return []
        self.load()
        assert self._encoder is not None
        cfg = self.config
        if cfg.long_passages == "window":
            ids, owners = self._encoder.encode_windows(
                pairs, overlap=cfg.resolved_window_overlap, max_windows=cfg.max_windows
            )
        else:
            ids, owners = self._encoder.encode(pairs), None
        scores: list[float] = [0.0] * len(ids)
        lengths = [len(x) for x in ids]
        if self._packed is not None:  # no padding: a batch costs its real tokens
            plan = plan_packed_batches(lengths, cfg.max_batch_tokens)
        else:
            plan = plan_batches(lengths, cfg.max_batch_tokens, multiple=self._multiple)
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


def _load_error_message(model: str, exc: BaseException) -> str:
    """One readable sentence about a failed load, instead of a hub traceback."""
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if looks_like_path and not Path(model).expanduser().is_dir():
        return f"could not load the reranker model {model!r}: no such folder.\n{_LOCAL_FOLDER_HINT}"
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return f"could not load the reranker model {model!r}: {reason}\n{_LOCAL_FOLDER_HINT}"


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
