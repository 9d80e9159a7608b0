"""The reduced-precision CPU options: int8 and bf16 stay within their bounds of fp32 and keep clear orders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bge_rerank_integrations import Reranker, RerankerConfig

from .seams import cross_encoder
from .test_batching import workload

# Largest |logit - fp32 logit| allowed on the tiny test model (2 layers, hidden 64, wide random
# weights: far noisier under quantization than a trained model, its logits spread over about 5).
# Measured over 200 pairs for each of twelve seeds: int8 0.53-1.16, bf16 0.17-0.41. On the
# benchmark's 6-layer subject the same options move logits by about 0.2 (int8) and 0.07 (bf16):
# benchmarks/RESULTS.md.
BOUNDS = {"int8": 1.5, "bfloat16": 0.5}


@pytest.mark.parametrize("dtype", list(BOUNDS))
def test_reduced_precision_stays_within_its_bound_of_fp32_and_keeps_clearly_separated_order(
    model_dir: Path, dtype: str
) -> None:
    pairs = workload(200, seed=11)
    exact = Reranker(model_dir, device="cpu").score_pairs(pairs)
    reduced = Reranker(model_dir, device="cpu", dtype=dtype)
    scores = reduced.score_pairs(pairs)
    packed = cross_encoder(reduced).packed
    assert packed is not None
    if dtype == "int8":  # the linear layers really run quantized (not fp32 under another name)
        assert packed.int8
        assert not isinstance(packed.layers[0].up[0], torch.Tensor)
    else:
        assert packed.word.dtype == torch.bfloat16
    deltas = [abs(a - b) for a, b in zip(scores, exact, strict=True)]
    assert max(deltas) <= BOUNDS[dtype]
    assert max(deltas) > 1e-3  # reduced precision, not fp32
    bound = BOUNDS[dtype]
    separated = [
        (i, j) for i in range(len(pairs)) for j in range(len(pairs)) if exact[i] - exact[j] > 2 * bound
    ]
    assert len(separated) > 100  # the check below has something to check
    assert all(scores[i] > scores[j] for i, j in separated)


def test_bf16_cpu_forward_packs_weights_once_and_attends_short_pairs_by_matmul(model_dir: Path) -> None:
    """bf16 on CPU: oneDNN linears on weights packed at load; short pairs' attention as matmuls (the
    default without AMX) or through the flash kernel (with AMX) agree.

    Both rearrange the same bf16 arithmetic (the matmul attention also rounds the scores to bf16
    before its fp32 softmax), so each stays within bf16's bound of fp32 (the test above) and close
    to the plain bf16 forward (torch's linears, flash attention): on these pairs up to about 0.15
    apart over five seeds, about the plain forward's own 0.1-0.2 from fp32.
    """
    pairs = workload(80, seed=1)
    exact = Reranker(model_dir, device="cpu").score_pairs(pairs)
    reranker = Reranker(model_dir, device="cpu", dtype="bfloat16", max_batch_tokens=3000).load()
    forward = cross_encoder(reranker).packed
    assert forward is not None
    assert forward.linear_library == "oneDNN, prepacked"
    assert all(not isinstance(layer.up[0], torch.nn.Parameter) for layer in forward.layers)
    lengths = sorted(len(ids) for ids in reranker.encode_pairs(pairs))
    forward.matmul_attention_tokens = lengths[-1]  # every pair takes the matmul way
    default = reranker.score_pairs(pairs)
    forward.matmul_attention_tokens = lengths[len(lengths) // 2]  # about half the pairs each way
    mixed = reranker.score_pairs(pairs)
    forward.matmul_attention_tokens = 0
    flash = reranker.score_pairs(pairs)
    forward.use_torch_linears()
    assert forward.linear_library == "torch"
    plain = reranker.score_pairs(pairs)
    assert default != plain  # the choices really switched
    assert mixed != default
    for scores in (default, mixed, flash, plain):
        assert scores == pytest.approx(exact, abs=BOUNDS["bfloat16"])
    for scores in (default, mixed, flash):
        assert scores == pytest.approx(plain, abs=0.25)


@pytest.mark.parametrize("amx", [False, True])
def test_bf16_cpu_attention_follows_the_processor(
    model_dir: Path, amx: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Short pairs attend by matmul where the CPU has no AMX tiles (faster there), by flash where it
    has them (faster there); fp32 always by flash. Each measured in benchmarks/RESULTS.md."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    bf16 = cross_encoder(Reranker(model_dir, device="cpu", dtype="bfloat16").load()).packed
    fp32 = cross_encoder(Reranker(model_dir, device="cpu").load()).packed
    assert bf16 is not None
    assert fp32 is not None
    assert bf16.matmul_attention_tokens == (0 if amx else 1024)
    assert fp32.matmul_attention_tokens == 0


@pytest.mark.parametrize("amx", [False, True])
def test_int8_kernels_follow_the_processor_and_agree(
    model_dir: Path, amx: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int8 linear layers on torch's oneDNN engine where the CPU has AMX tiles, fbgemm elsewhere
    (each the faster there); the same quantization scheme, so the same bound of fp32 either way."""
    pairs = workload(120, seed=5)
    exact = Reranker(model_dir, device="cpu").score_pairs(pairs)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    reranker = Reranker(model_dir, device="cpu", dtype="int8")
    scores = reranker.score_pairs(pairs)
    forward = cross_encoder(reranker).packed
    assert forward is not None
    assert forward.linear_library == ("int8 (oneDNN, AMX)" if amx else "int8 (fbgemm)")
    deltas = [abs(a - b) for a, b in zip(scores, exact, strict=True)]
    assert 1e-3 < max(deltas) <= BOUNDS["int8"]


def test_int8_keeps_the_query_order_of_a_real_request(model_dir: Path) -> None:
    """Through the public score(): the best passage of a request stays first (a clear winner)."""
    pairs = workload(40, seed=4)
    query = pairs[0][0]
    passages = [p for _, p in pairs]
    exact = Reranker(model_dir, device="cpu").score(query, passages)
    reduced = Reranker(model_dir, device="cpu", dtype="int8").score(query, passages)
    ranked = sorted(range(len(passages)), key=lambda i: -exact[i])
    if exact[ranked[0]] - exact[ranked[1]] > 2 * BOUNDS["int8"]:
        assert max(range(len(passages)), key=lambda i: reduced[i]) == ranked[0]
    top = [i for i in ranked if exact[ranked[0]] - exact[i] <= 2 * BOUNDS["int8"]]
    assert max(range(len(passages)), key=lambda i: reduced[i]) in top


def test_int8_is_a_dtype_setting_with_a_canonical_name() -> None:
    assert RerankerConfig(dtype="int8").dtype == "int8"
    assert RerankerConfig(dtype="INT8").dtype == "int8"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int4"):
        RerankerConfig(dtype="int4")  # type: ignore[arg-type]


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps", "meta"])
def test_int8_off_the_cpu_is_refused_before_the_weights_load(model_dir: Path, device: str) -> None:
    with pytest.raises(ValueError, match=r"dtype='int8' runs on CPU only.*" + device.split(":")[0]):
        Reranker(model_dir, device=device, dtype="int8").load()


def test_int8_needs_the_padding_free_forward(model_dir: Path, tmp_path: Path) -> None:
    """A model the padding-free forward cannot take gets a clear error, not a silent fp32 run."""
    other = tmp_path / "tanh-gelu"
    shutil.copytree(model_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu_new"}))
    assert Reranker(other, device="cpu").score("q", ["p"])  # fp32 still runs, padded
    with pytest.raises(ValueError, match=r"dtype='int8' needs the padding-free forward.*hidden_act"):
        Reranker(other, device="cpu", dtype="int8").load()


def test_int8_reaches_the_core_through_every_adapter(model_dir: Path) -> None:
    """Each adapter passes dtype through as a string: "int8" is accepted and scores in int8."""
    from haystack import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from bge_rerank_integrations.haystack import BGERanker
    from bge_rerank_integrations.langchain import BGERerankCompressor
    from bge_rerank_integrations.llamaindex import BGERerank

    query, passages = "which city is the capital", ["Berlin is the capital.", "Water boils at 100 C."]
    expected = Reranker(model_dir, device="cpu", dtype="int8").score(query, passages, normalize=True)
    compressor = BGERerankCompressor(model=str(model_dir), device="cpu", dtype="int8")
    postprocessor = BGERerank(model=str(model_dir), device="cpu", dtype="int8", top_n=2)
    assert compressor.dtype == postprocessor.dtype == "int8"
    nodes = [NodeWithScore(node=TextNode(text=p)) for p in passages]
    ranked = postprocessor.postprocess_nodes(nodes, query_str=query)
    assert sorted(n.score for n in ranked) == pytest.approx(sorted(expected), abs=1e-6)
    ranker = BGERanker(model=str(model_dir), dtype="int8", top_k=2)
    assert ranker.to_dict()["init_parameters"]["dtype"] == "int8"
    ranker.warm_up()
    docs = ranker.run(query=query, documents=[Document(content=p) for p in passages])["documents"]
    assert sorted(d.score for d in docs) == pytest.approx(sorted(expected), abs=1e-6)
    packed = cross_encoder(postprocessor.reranker).packed
    assert packed is not None
    assert packed.int8
