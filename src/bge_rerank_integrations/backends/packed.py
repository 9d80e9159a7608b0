"""A padding-free forward pass for XLM-RoBERTa/RoBERTa cross-encoders (bge-reranker-v2-m3's family).

A padded batch spends matrix-multiply time on pad tokens: the longest pair sets the width of every
row. Here the pairs of a batch are concatenated into one ``[tokens, hidden]`` matrix, so every linear
layer (query/key/value, fused into one, attention output, the feed-forward pair) runs on real tokens
(on CPU plus at most 63 spare rows a pass, which keep the matrix shapes few); attention, the one step
that needs to know where a pair starts and ends, runs per pair group on exactly that pair's tokens.
The classifier reads only each pair's first (``<s>``) row, so the last layer computes keys and
values for every token but everything else for those rows alone.
The weights are the ``transformers`` model's own (the fused query/key/value matrix is stored once and
the model's three projections become views of it), and the arithmetic is the same, so the logits
match the padded ``transformers`` forward up to float rounding.

Only the plain architecture is taken: absolute positions, ``gelu``, an encoder without cross
attention, a ``<s>``-token classification head. :func:`packed_support` names the first thing that
does not fit, and the backend then keeps the ``transformers`` forward.
"""

from __future__ import annotations

import copy
import itertools
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["PackedForward", "packed_support"]

logger = logging.getLogger(__name__)

_SUPPORTED_CLASSES = ("XLMRobertaForSequenceClassification", "RobertaForSequenceClassification")


def packed_support(model: Any) -> str | None:
    """``None`` if ``model`` can run padding-free, else the reason it cannot."""
    name = type(model).__name__
    if name not in _SUPPORTED_CLASSES:
        return f"{name} is not one of {', '.join(_SUPPORTED_CLASSES)}"
    cfg = model.config
    checks = {
        "hidden_act": (getattr(cfg, "hidden_act", None), "gelu"),
        "position_embedding_type": (getattr(cfg, "position_embedding_type", "absolute"), "absolute"),
        "is_decoder": (bool(getattr(cfg, "is_decoder", False)), False),
        "add_cross_attention": (bool(getattr(cfg, "add_cross_attention", False)), False),
        "chunk_size_feed_forward": (int(getattr(cfg, "chunk_size_feed_forward", 0) or 0), 0),
    }
    for key, (value, wanted) in checks.items():
        if value != wanted:
            return f"config.{key} is {value!r}, not {wanted!r}"
    if getattr(model.roberta, "pooler", None) is not None:
        return "the model has a pooler layer"
    if cfg.hidden_size % cfg.num_attention_heads:
        return "hidden_size is not a multiple of num_attention_heads"
    return None


_Linear = Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor]  # (input, weight, bias)

_CPU_ROW_MULTIPLE = 64


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host-made tensor on ``device``, copied without making the host wait (pinned on CUDA)."""
    if device.type == "cpu":
        return t
    pin = device.type == "cuda"
    return (t.pin_memory() if pin else t).to(device, non_blocking=pin)


def _gelu_after(linear: _Linear) -> _Linear:
    def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        out = linear(x, weight, bias)
        torch.ops.aten.gelu_(out)  # the exact (erf) GELU, in place
        return out

    return linear_gelu


def _passes_self_check(what: str, reference: str, agrees: Callable[[], bool]) -> bool:
    """Whether an optional fast path runs here and ``agrees()`` with ``reference``; logs why not.

    The fast paths rest on private or recent torch ops, so each is tried once at load on small
    random inputs; a failure only costs speed, never a wrong score.
    """
    try:
        ok = agrees()
    except Exception as exc:
        logger.info("%s unavailable (%s)", what, exc)
        return False
    if not ok:
        logger.warning("not using %s: results differ from %s", what, reference)
    return ok


def _onednn_linears() -> tuple[_Linear, _Linear] | None:
    """oneDNN's fp32 linear layer, and the same with GELU fused, if they run here and agree with torch's.

    torch's CPU ``addmm`` calls MKL's sgemm, which on the AMD EPYC this project measures on reaches
    187-205 GFLOP/s on the layer shapes against oneDNN's 198-222 (benchmarks/RESULTS.md). The op is
    private to torch (its compiler's CPU fusions use it), so it is probed once and ``F.linear`` stays
    the fallback.
    """
    op: Any = getattr(torch.ops.mkldnn, "_linear_pointwise", None)  # None where torch lacks it

    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = op(x, weight, bias, "none", [], "")
        return out

    def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = op(x, weight, bias, "gelu", [], "none")  # "none": erf, not tanh
        return out

    def agrees() -> bool:
        if op is None:
            raise RuntimeError("torch.ops.mkldnn._linear_pointwise is missing")
        gen = torch.Generator().manual_seed(0)
        x, weight, bias = (torch.randn(*shape, generator=gen) for shape in ((37, 96), (80, 96), (80,)))
        with torch.inference_mode():
            plain = torch.allclose(linear(x, weight, bias), F.linear(x, weight, bias), atol=1e-4, rtol=1e-4)
            gelu = F.gelu(F.linear(x, weight, bias))
            return plain and torch.allclose(linear_gelu(x, weight, bias), gelu, atol=1e-4, rtol=1e-4)

    if not _passes_self_check("oneDNN linear layers", "torch's", agrees):
        return None
    return linear, linear_gelu


_Pack = Callable[[torch.Tensor, torch.Tensor], Any]  # (weight, bias) -> the kernel's packed weight


def _prepacked_bf16_linears() -> tuple[_Pack, _Linear, _Linear] | None:
    """oneDNN's bf16 linear layer, and the same with GELU fused, on weights packed once at load.

    torch's bf16 ``F.linear`` on CPU also runs oneDNN, but reorders the weight into
    oneDNN's blocked layout on every call; packing once and fusing the GELU made the bf16 forward
    1.10x faster (benchmarks/RESULTS.md), for a second copy of the linear weights (the
    ``transformers`` module keeps its own for padded batches). Probed once, like the fp32 path.
    """
    op: Any = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    reorder: Any = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)

    def pack(weight: torch.Tensor, bias: torch.Tensor) -> Any:
        return reorder(weight.detach().contiguous(), _PACK_ROWS_HINT)

    def linear(x: torch.Tensor, packed: Any, bias: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = op(x, packed, bias, "none", [], "")
        return out

    def linear_gelu(x: torch.Tensor, packed: Any, bias: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = op(x, packed, bias, "gelu", [], "none")  # "none": erf, not tanh
        return out

    def agrees() -> bool:
        if op is None or reorder is None:
            raise RuntimeError("torch.ops.mkldnn lacks _linear_pointwise or _reorder_linear_weight")
        gen = torch.Generator().manual_seed(0)
        shapes = ((37, 96), (80, 96), (80,))
        x, weight, bias = (torch.randn(*shape, generator=gen).bfloat16() for shape in shapes)
        packed = pack(weight, bias)
        with torch.inference_mode():
            plain = F.linear(x.float(), weight.float(), bias.float())
            bound = 0.02 * plain.abs().max()  # bf16 rounding, not a wrong kernel
            ok = (linear(x, packed, bias).float() - plain).abs().max() <= bound
            gelu = (linear_gelu(x, packed, bias).float() - F.gelu(plain)).abs().max() <= bound
            return bool(ok and gelu)

    if not _passes_self_check("prepacked oneDNN bf16 linear layers", "fp32", agrees):
        return None
    return pack, linear, linear_gelu


_BF16_MATMUL_ATTENTION_TOKENS = 1024
"""In bf16 on a CPU without AMX, pairs up to this long attend through oneDNN matmuls and a float
softmax: torch's flash kernel there ran 1.09x slower on the interactive workload (AMD Zen 4); beyond
it the ``[heads, length, length]`` scores outgrow the cache and flash wins. With AMX tiles the flash
kernel is the faster, 1.25x (benchmarks/RESULTS.md)."""


def _has_amx() -> bool:
    """Whether this CPU has AMX tiles torch can use (Intel Sapphire Rapids and later)."""
    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch, no public twin
    return has_amx is not None and bool(has_amx())


def _bf16_matmul_attention_tokens() -> int:
    """:data:`_BF16_MATMUL_ATTENTION_TOKENS` where the CPU has no AMX tiles, else 0 (flash always)."""
    return 0 if _has_amx() else _BF16_MATMUL_ATTENTION_TOKENS


_PACK_ROWS_HINT = 2048
"""The row count oneDNN packs the weights for (the CPU chunks' order of size); any row count runs."""


def _int8_kernels() -> tuple[str, _Pack, _Linear, _Linear] | None:
    """The int8 linear layers for this CPU, named: torch's oneDNN engine where the CPU has AMX tiles
    (the int8 products on AMX: 1.8-3.2x fbgemm's layer on the feed-forward and attention shapes,
    same results, benchmarks/RESULTS.md), else fbgemm (measured on AVX-512 VNNI); ``None`` where
    neither runs and agrees with fp32."""
    if _has_amx() and "onednn" in torch.backends.quantized.supported_engines:
        onednn = _int8_linears("onednn")
        if onednn is not None:
            return ("int8 (oneDNN, AMX)", *onednn)
    fbgemm = _int8_linears("fbgemm")
    return None if fbgemm is None else ("int8 (fbgemm)", *fbgemm)


def _int8_linears(engine: str) -> tuple[_Pack, _Linear, _Linear] | None:
    """Dynamic int8 linear layers of torch's quantized ``engine`` (``"fbgemm"`` or ``"onednn"``), if
    they run here and agree with fp32 within int8's noise.

    Returns how to pack a layer's weight once, and the linear layer without and with (exact) GELU,
    each taking that packed weight. Weights are int8, symmetric per output channel; activations are
    quantized to uint8 over each call's whole input, on the fly. On CPUs without VNNI the 8-bit
    products would overflow fbgemm's 16-bit sums, so activations then keep 7 bits (``reduce_range``),
    chosen by a check on worst-case inputs rather than by the CPU's name.
    """
    quantized: Any = torch.ops.quantized

    def pack(weight: torch.Tensor, bias: torch.Tensor) -> Any:
        weight, bias = weight.detach().float(), bias.detach().float()
        scale = weight.abs().amax(1).clamp(min=1e-12) / 127
        zero = torch.zeros(weight.shape[0], dtype=torch.long)
        previous = torch.backends.quantized.engine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors are deprecated in torch; only used here
            try:
                torch.backends.quantized.engine = engine  # the packed weight keeps its engine
                q = torch.quantize_per_channel(weight, scale.double(), zero, 0, torch.qint8)
                return quantized.linear_prepack(q, bias)
            finally:
                torch.backends.quantized.engine = previous

    reduce_range = False

    def linear(x: torch.Tensor, packed: Any, bias: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = quantized.linear_dynamic(x, packed, reduce_range)
        return out

    def linear_gelu(x: torch.Tensor, packed: Any, bias: torch.Tensor) -> torch.Tensor:
        out = linear(x, packed, bias)
        torch.ops.aten.gelu_(out)
        return out

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool((a - b).abs().max() <= 0.02 * b.abs().max())  # int8 noise, not a wrong kernel

    def agrees() -> bool:
        nonlocal reduce_range
        gen = torch.Generator().manual_seed(0)
        x, weight, bias = (torch.randn(*shape, generator=gen) for shape in ((37, 96), (80, 96), (80,)))
        packed = pack(weight, bias)
        with torch.inference_mode():
            plain = close(linear(x, packed, bias), F.linear(x, weight, bias))
            gelu = close(linear_gelu(x, packed, bias), F.gelu(F.linear(x, weight, bias)))
            # worst case for 16-bit sums: every product at its largest, all of one sign
            big, ones = torch.ones(4, 256), torch.ones(8, 256)
            reduce_range = not close(
                linear(big, pack(ones, bias[:8]), bias[:8]), F.linear(big, ones, bias[:8])
            )
            if reduce_range:
                logger.info("int8 linear layers: 7-bit activations (this CPU's int8 sums are 16-bit)")
        return plain and gelu

    if not _passes_self_check(f"int8 linear layers ({engine})", "fp32", agrees):
        return None
    return pack, linear, linear_gelu


class _Layer:
    """Weights of one encoder layer, fused query/key/value first."""

    __slots__ = ("down", "kv", "ln1", "ln2", "out", "q", "qkv", "up")

    def __init__(self, layer: Any) -> None:
        attn = layer.attention
        self.qkv = _fuse_qkv(attn.self)
        hidden = self.qkv[0].shape[1]
        self.q = (self.qkv[0][:hidden], self.qkv[1][:hidden])  # the last layer's split (views)
        self.kv = (self.qkv[0][hidden:], self.qkv[1][hidden:])
        self.out = (attn.output.dense.weight, attn.output.dense.bias)
        self.ln1 = (attn.output.LayerNorm.weight, attn.output.LayerNorm.bias, attn.output.LayerNorm.eps)
        self.up = (layer.intermediate.dense.weight, layer.intermediate.dense.bias)
        self.down = (layer.output.dense.weight, layer.output.dense.bias)
        self.ln2 = (layer.output.LayerNorm.weight, layer.output.LayerNorm.bias, layer.output.LayerNorm.eps)

    def pack_weights(self, pack: _Pack, *, last: bool) -> None:
        """Replace the linear layers' weights by ``pack(weight, bias)`` (the bias stays for the call).

        The query and key/value parts are packed apart only for the ``last`` layer, the one that runs
        them (:meth:`PackedForward._last_layer`): packed, they would be copies, not views.
        """
        for name in ("qkv", "out", "up", "down", *(("q", "kv") if last else ())):
            weight, bias = getattr(self, name)
            setattr(self, name, (pack(weight, bias), bias))


def _fuse_qkv(attn: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``[3 * hidden, hidden]`` projection; the model's query/key/value weights become its views."""
    parts = (attn.query, attn.key, attn.value)
    weight = torch.cat([p.weight.detach() for p in parts])
    bias = torch.cat([p.bias.detach() for p in parts])
    hidden = parts[0].weight.shape[0]
    for i, p in enumerate(parts):  # share storage instead of holding the weights twice
        p.weight = torch.nn.Parameter(weight[i * hidden : (i + 1) * hidden], requires_grad=False)
        p.bias = torch.nn.Parameter(bias[i * hidden : (i + 1) * hidden], requires_grad=False)
    return weight, bias


class PackedForward:
    """Logits of an XLM-RoBERTa sequence classifier over concatenated (unpadded) pairs.

    Call it under ``torch.inference_mode()`` with the pairs' input ids; it returns their fp32 logits.
    Check :func:`packed_support` first.
    """

    def __init__(self, model: Any, *, chunk_tokens: int | None = None, int8: bool = False) -> None:
        """Take the weights of a loaded ``transformers`` model (it stays usable).

        ``chunk_tokens`` runs a batch in consecutive parts of about that many tokens, every part
        through all layers before the next: on CPU, activations that fit the cache beat one big
        matrix (measured in ``benchmarks/RESULTS.md``). ``None`` runs each batch whole. ``int8`` runs
        the encoder's linear layers in int8 (CPU, fp32 weights; see :func:`_int8_kernels`).
        """
        cfg = model.config
        emb = model.roberta.embeddings
        self.pad_id = int(cfg.pad_token_id)
        self.heads = int(cfg.num_attention_heads)
        self.hidden = int(cfg.hidden_size)
        self.word = emb.word_embeddings.weight
        self.position = emb.position_embeddings.weight
        self.token_type0 = emb.token_type_embeddings.weight[0]
        self.ln0 = (emb.LayerNorm.weight, emb.LayerNorm.bias, emb.LayerNorm.eps)
        self.layers = [_Layer(layer) for layer in model.roberta.encoder.layer]
        head = model.classifier
        self.dense = (head.dense.weight, head.dense.bias)
        self.out_proj = (head.out_proj.weight, head.out_proj.bias)
        self.device = self.word.device
        self.chunk_tokens = chunk_tokens
        self.first_rows_only = True
        """Run the last layer on each pair's ``<s>`` row only (``False``: on every row, for benchmarks)."""
        self.attention = "per-pair" if self.device.type == "cpu" else "padded"
        if self._varlen_works():
            self.attention = "varlen"
        self.linear: _Linear = F.linear
        self.linear_gelu = _gelu_after(F.linear)
        # On CPU the linear layers run on oneDNN (fp32 and bf16 by our choice, fp16 inside torch), which
        # builds and caches a kernel per matrix shape (memory grows with every new token count):
        # rounding the row count up keeps the shapes to a few dozen, for at most 63 spare rows a pass.
        self.row_multiple = _CPU_ROW_MULTIPLE if self.device.type == "cpu" else 1
        self.computed_rows = 0
        cpu = self.device.type == "cpu"
        onednn = _onednn_linears() if cpu and self.word.dtype == torch.float32 else None
        if onednn is not None:
            self.linear, self.linear_gelu = onednn
        self.int8 = False
        """Whether the encoder's linear layers run in int8 (asked for, and the kernels work here)."""
        self._dense_layers = self.layers  # views of the module's weights, for use_torch_linears
        int8_ops = _int8_kernels() if int8 and cpu else None
        int8_library = ""
        packing: tuple[_Pack, _Linear, _Linear] | None = None
        if int8 and (int8_ops is None or self.word.dtype != torch.float32):
            logger.warning("int8 linear layers unavailable (CPU and fp32 weights only); running fp32")
        elif int8_ops is not None:
            int8_library, packing, self.int8 = int8_ops[0], int8_ops[1:], True
        elif cpu and self.word.dtype == torch.bfloat16:  # fp16 on CPU: oneDNN needs AVX-512 FP16
            packing = _prepacked_bf16_linears()
        if packing is not None:
            pack, self.linear, self.linear_gelu = packing
            self.layers = [copy.copy(layer) for layer in self._dense_layers]
            for i, layer in enumerate(self.layers):
                layer.pack_weights(pack, last=i == len(self.layers) - 1)
        bf16_packed = packing is not None and not self.int8
        library = "oneDNN, prepacked" if bf16_packed else "oneDNN" if onednn else "torch"
        self.linear_library = int8_library or library
        """What runs the linear layers: ``"oneDNN"`` (fp32 on CPU where it works), ``"oneDNN,
        prepacked"`` (bf16 on CPU), ``"int8 (oneDNN, AMX)"``, ``"int8 (fbgemm)"`` or ``"torch"``."""
        self.matmul_attention_tokens = _bf16_matmul_attention_tokens() if bf16_packed else 0
        """Per-pair attention of pairs up to this many tokens as two matrix multiplies and a softmax
        instead of torch's flash kernel (0: never; bf16 on CPUs without AMX: 1,024); see
        :class:`_Attention`."""
        by_matmul = self.matmul_attention_tokens
        logger.info(
            "padding-free forward on %s, attention: %s%s, linear layers: %s",
            self.device,
            self.attention,
            f" (by matmul up to {by_matmul} tokens)" if by_matmul else "",
            self.linear_library,
        )

    def use_torch_linears(self) -> None:
        """Run the linear layers with torch's own ``F.linear`` from now on (rows not rounded up): the
        baseline the tuned kernels are compared with.

        Packed weights (int8, or bf16 on CPU) give way to the module's own.
        """
        self.layers, self.int8 = self._dense_layers, False
        self.linear, self.linear_gelu, self.row_multiple = F.linear, _gelu_after(F.linear), 1
        self.linear_library = "torch"

    def __call__(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """fp32 logits ``[len(batch)]`` of the id sequences in ``batch`` (any order, any lengths).

        Afterwards ``computed_rows`` holds the rows the linear layers ran on: real tokens plus spare rows.
        """
        self.computed_rows = 0
        if self.chunk_tokens is None or sum(len(x) for x in batch) <= self.chunk_tokens:
            return self._run(batch)
        return torch.cat([self._run([batch[i] for i in part]) for part in self._chunks(batch)])

    def _chunks(self, batch: Sequence[Sequence[int]]) -> list[list[int]]:
        """Consecutive runs of ``batch`` of about ``chunk_tokens`` tokens each (a longer pair alone)."""
        assert self.chunk_tokens is not None
        total = sum(len(x) for x in batch)
        target = total / -(-total // self.chunk_tokens)  # equal parts rather than a small remainder
        parts: list[list[int]] = [[]]
        size = 0
        for i, ids in enumerate(batch):
            if parts[-1] and size + len(ids) > target * 1.05:
                parts.append([])
                size = 0
            parts[-1].append(i)
            size += len(ids)
        return parts

    def _run(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        h, attend, starts = self._embed(batch)
        for layer in self.layers[:-1]:
            h = self.encoder_layer(h, layer, attend)
        if self.first_rows_only:
            first = self._last_layer(h, self.layers[-1], attend, starts)
        else:
            first = self.encoder_layer(h, self.layers[-1], attend)[starts]
        logits = F.linear(torch.tanh(F.linear(first, *self.dense)), *self.out_proj)
        return logits[: len(batch), 0].float()

    def _embed(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, _Attention, torch.Tensor]:
        """The embedded rows (spare rows included), the pairs' attention, and each pair's first row.

        The first rows are as many as the pairs, rounded up like the rows (the extra ones repeat row 0).
        """
        lengths = [len(x) for x in batch]
        bounds = list(itertools.accumulate(lengths, initial=0))
        ids = torch.tensor(list(itertools.chain.from_iterable(batch)), dtype=torch.long)
        positions = self._positions(ids, lengths, bounds)
        spare = -bounds[-1] % self.row_multiple
        self.computed_rows += bounds[-1] + spare
        if spare:  # rows that belong to no pair: row-wise layers carry them, attention skips them
            ids, positions = (F.pad(t, (0, spare), value=self.pad_id) for t in (ids, positions))
        starts = torch.tensor(bounds[:-1] + [0] * (-len(batch) % self.row_multiple), dtype=torch.long)
        ids, positions, starts = (_to_device(t, self.device) for t in (ids, positions, starts))
        # in place where a fresh tensor is not needed (fewer allocations; bit-identical results, and
        # within noise of the out-of-place version on CPU: benchmarks/RESULTS.md)
        h = self.word[ids]
        h += self.position[positions]
        h += self.token_type0
        h = F.layer_norm(h, (self.hidden,), *self.ln0)
        attend = _Attention(bounds, self.heads, self.device, self.attention, self.matmul_attention_tokens)
        return h, attend, starts

    def encoder_layer(self, h: torch.Tensor, layer: _Layer, attend: _Attention) -> torch.Tensor:
        """One encoder layer over the packed rows ``h``: ``layer``'s weights, ``attend`` the pairs' attention.

        A seam for variants: a subclass may override it to time another layer implementation
        (``benchmarks.ablations`` does); the last layer keeps :meth:`_last_layer` unless
        ``first_rows_only`` is ``False``.
        """
        a = self.linear(attend(self.linear(h, *layer.qkv)), *layer.out)
        a += h
        h = F.layer_norm(a, (self.hidden,), *layer.ln1)
        down = self.linear(self.linear_gelu(h, *layer.up), *layer.down)  # the exact (erf) GELU
        down += h
        return F.layer_norm(down, (self.hidden,), *layer.ln2)

    def _last_layer(
        self, h: torch.Tensor, layer: _Layer, attend: _Attention, starts: torch.Tensor
    ) -> torch.Tensor:
        """The last encoder layer, on the rows the classifier reads: each pair's ``<s>`` token.

        Its keys and values need every token, but no other row's output is read after it, so its
        queries, attention output, feed-forward block and norms run on one row a pair; the same
        arithmetic for those rows, without the rest (on the reduced subject a sixth of the work).
        """
        first = h[starts]
        query = self.linear(first, *layer.q)
        key_value = self.linear(h, *layer.kv)
        a = self.linear(attend.first_rows(query, key_value), *layer.out)
        a += first
        first = F.layer_norm(a, (self.hidden,), *layer.ln1)
        down = self.linear(self.linear_gelu(first, *layer.up), *layer.down)
        down += first
        return F.layer_norm(down, (self.hidden,), *layer.ln2)

    def _positions(self, ids: torch.Tensor, lengths: list[int], bounds: list[int]) -> torch.Tensor:
        """RoBERTa position ids: pad_id + 1 + index within the pair, counting non-pad tokens only.

        Identical to ``create_position_ids_from_input_ids`` on the padded batch, including its
        treatment of a literal pad token inside a pair (it keeps position ``pad_id``).
        """
        real = ids.ne(self.pad_id).long()
        counts = real.cumsum(0)
        before = torch.cat([counts.new_zeros(1), counts])[torch.tensor(bounds[:-1])]  # count up to each start
        return (counts - torch.repeat_interleave(before, torch.tensor(lengths))) * real + self.pad_id

    def _varlen_works(self) -> bool:
        """Whether fused variable-length attention runs here and agrees with per-pair attention."""
        if self.device.type != "cuda" or self.word.dtype not in (torch.float16, torch.bfloat16):
            return False

        def agrees() -> bool:
            from torch.nn.attention.varlen import varlen_attn  # noqa: F401  (torch >= 2.9)

            gen = torch.Generator(device="cpu").manual_seed(0)
            bounds = [0, 37, 101]
            qkv = torch.randn(bounds[-1], 3 * self.hidden, generator=gen).to(self.device, self.word.dtype)
            fused = _Attention(bounds, self.heads, self.device, "varlen")(qkv)
            plain = _Attention(bounds, self.heads, self.device, "per-pair")(qkv)
            return bool((fused.float() - plain.float()).abs().max() < 1e-2)

        return _passes_self_check("variable-length attention", "per-pair attention", agrees)


class _Attention:
    """Self-attention of each pair over its own tokens, on a packed ``[rows, 3 * hidden]`` input.

    Rows past the last pair (spare rows) are skipped, and come out as zeros.

    Three ways, same result: ``"varlen"``, one fused variable-length flash-attention call (CUDA, half
    precision, torch >= 2.9); ``"padded"``, the pairs gathered into a padded ``[pairs, longest]``
    block for one masked ``scaled_dot_product_attention`` call (other CUDA cases: padding costs only
    attention, not the linear layers); ``"per-pair"``, one call per pair on views of the packed
    matrix (CPU: a few microseconds each, where the matrix multiplies dominate). Per pair, a pair of
    at most ``matmul_up_to`` tokens runs ``softmax(q k^T / sqrt(d)) v`` as two batched matmuls over
    its heads, the softmax in fp32 (bf16 on CPU, where that beats the flash kernel).
    """

    def __init__(
        self, bounds: list[int], heads: int, device: torch.device, mode: str, matmul_up_to: int = 0
    ) -> None:
        self.bounds = bounds
        self.matmul_up_to = matmul_up_to
        self.heads = heads
        self.mode = mode
        self.device = device
        self.longest = max(b - a for a, b in itertools.pairwise(bounds))
        self._padded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        # The forward indexes with integers only: a boolean mask would make the host wait for the device.
        if mode == "varlen":
            self.cu_seq = _to_device(torch.tensor(bounds, dtype=torch.int32), device)
        elif mode == "padded":
            self._padded_layout()

    def _padded_layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The padded ``[pairs, longest]`` block's source row of every slot, its mask, its real slots."""
        if self._padded is None:
            bounds, tokens = self.bounds, self.bounds[-1]
            lengths = torch.tensor([b - a for a, b in itertools.pairwise(bounds)])
            offsets = torch.arange(self.longest)
            valid = offsets[None, :] < lengths[:, None]  # [pairs, longest]
            # flat token index of every padded slot; pad slots read row ``tokens`` (zeros)
            index = torch.where(valid, torch.tensor(bounds[:-1])[:, None] + offsets[None, :], tokens)
            real = valid.reshape(-1).nonzero().squeeze(1)  # real slots, in order
            self._padded = (
                _to_device(index, self.device),
                _to_device(valid[:, None, None, :], self.device),
                _to_device(real, self.device),
            )
        return self._padded

    def first_rows(self, query: torch.Tensor, key_value: torch.Tensor) -> torch.Tensor:
        """Attention of each pair's first token over its pair: ``[rows, hidden]`` from the first rows'
        queries ``[rows, hidden]`` (a row per pair, then extra rows, which come out as zeros) and every
        token's keys and values ``[tokens or more, 2 * hidden]``."""
        rows, hidden = query.shape
        dim = hidden // self.heads
        pairs = len(self.bounds) - 1
        out = query.new_zeros(rows, hidden)
        if self.mode == "per-pair":
            split = key_value.view(-1, 2, self.heads, dim)
            for i, (start, stop) in enumerate(itertools.pairwise(self.bounds)):
                k, v = (split[start:stop, j].transpose(0, 1).unsqueeze(0) for j in range(2))
                q = query[i].view(1, self.heads, 1, dim)
                out[i] = F.scaled_dot_product_attention(q, k, v).view(hidden)
            return out
        index, mask, _ = self._padded_layout()
        tokens = self.bounds[-1]
        block = torch.cat([key_value[:tokens], key_value.new_zeros(1, 2 * hidden)])[index]
        k, v = block.view(pairs, self.longest, 2, self.heads, dim).permute(2, 0, 3, 1, 4)
        q = query[:pairs].view(pairs, self.heads, 1, dim)
        out[:pairs] = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).view(pairs, hidden)
        return out

    def __call__(self, qkv: torch.Tensor) -> torch.Tensor:
        """``[rows, hidden]``: each pair's attention output; rows past the last pair are zeros."""
        rows = qkv.shape[0]
        tokens = self.bounds[-1]
        if self.mode == "per-pair":
            return self._per_pair(qkv)
        out = self._fused(qkv[:tokens])
        return out if rows == tokens else torch.cat([out, out.new_zeros(rows - tokens, out.shape[1])])

    def _fused(self, qkv: torch.Tensor) -> torch.Tensor:
        tokens, width = qkv.shape
        hidden = width // 3
        dim = hidden // self.heads
        split = qkv.view(tokens, 3, self.heads, dim)  # [tokens, 3, heads, dim]
        if self.mode == "varlen":
            from torch.nn.attention.varlen import varlen_attn

            q, k, v = (split[:, i].contiguous() for i in range(3))
            fused = varlen_attn(q, k, v, self.cu_seq, self.cu_seq, self.longest, self.longest)
            assert isinstance(fused, torch.Tensor)  # no auxiliary outputs were requested
            return fused.reshape(tokens, hidden)
        if self.mode == "padded":
            index, mask, real = self._padded_layout()
            pairs = index.shape[0]
            rows = torch.cat([qkv, qkv.new_zeros(1, width)])[index]  # [pairs, longest, 3 * hidden]
            q, k, v = rows.view(pairs, self.longest, 3, self.heads, dim).permute(2, 0, 3, 1, 4)
            block = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [pairs, heads, longest, dim]
            return block.transpose(1, 2).reshape(pairs * self.longest, hidden).index_select(0, real)
        raise ValueError(f"unknown attention mode {self.mode!r}")

    def _per_pair(self, qkv: torch.Tensor) -> torch.Tensor:
        rows, width = qkv.shape
        hidden = width // 3
        dim = hidden // self.heads
        split = qkv.view(rows, 3, self.heads, dim)  # [rows, 3, heads, dim]
        out = qkv.new_empty(rows, self.heads, dim)
        out[self.bounds[-1] :] = 0
        scale = dim**-0.5
        for start, stop in itertools.pairwise(self.bounds):
            # per pair [heads, length, dim] views of the packed matrix, no copies
            q, k, v = (split[start:stop, i].transpose(0, 1) for i in range(3))
            if stop - start <= self.matmul_up_to:
                scores = torch.matmul(q, k.transpose(1, 2)).float().mul_(scale)
                weights = scores.softmax(-1).to(qkv.dtype)
                out[start:stop] = torch.matmul(weights, v).transpose(0, 1)
            else:
                attended = F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0))
                out[start:stop] = attended[0].transpose(0, 1)
        return out.view(rows, hidden)
