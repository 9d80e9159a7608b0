"""Build small random bge-reranker-shaped models offline, for tests, examples and benchmarks.

The Hugging Face hub is not always reachable (CI, air-gapped boxes), yet every code path of this
package should run against a real XLM-RoBERTa cross-encoder and a real trained fast tokenizer. This
module trains a Unigram tokenizer with the ``tokenizers`` library on a built-in multilingual corpus,
puts every character of its alphabets in the vocabulary (so ``<unk>`` stays rare, as with the real
250k vocabulary), and saves a randomly initialised ``XLMRobertaForSequenceClassification`` with one
label, in any size up to the full bge-reranker-v2-m3 shape.

The decoder-only members of the family get the same treatment (:func:`build_decoder_test_model`):
a Gemma-like byte-fallback BPE tokenizer trained on the same corpus (``<pad>``, ``<eos>``, ``<bos>``,
``<unk>``, ``<mask>`` first, then the 256 byte tokens, and a single-token ``Yes``), and a random
``GemmaForCausalLM`` (bge-reranker-v2-gemma) or, for the two kinds with custom model code
(bge-reranker-v2-minicpm-layerwise, bge-reranker-v2.5-gemma2-lightweight), a random model whose
modeling files are copied from the installed FlagEmbedding next to its config, with ``auto_map``, so
it loads with ``trust_remote_code=True`` as the real repositories do. FlagEmbedding is a test-time
dependency of those two builds only; none of its code is part of this package.

Run ``python -m bge_rerank_integrations.testing FOLDER`` to write the default tiny model, and
``--kind v2-gemma`` (or another decoder kind) for a decoder-only one.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bge_rerank_integrations.llm_layout import LLM_KINDS, KindName

__all__ = [
    "DECODER_KINDS",
    "FULL_DECODER_SHAPES",
    "FULL_SHAPE",
    "TINY_DECODER_SHAPES",
    "TINY_SHAPE",
    "DecoderKind",
    "DecoderShape",
    "ModelShape",
    "build_decoder_test_model",
    "build_test_model",
    "decoder_model_marker",
    "model_marker",
]


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """Architecture of a random XLM-RoBERTa cross-encoder (defaults: a 2-layer toy)."""

    num_hidden_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    intermediate_size: int = 128
    vocab_size: int | None = None
    """Embedding rows; ``None`` uses the trained tokenizer's size (a larger value is padded)."""
    max_position_embeddings: int = 8194
    initializer_range: float = 0.3
    """Weight scale. The default 0.02 makes every pair score almost alike; larger spreads scores."""


TINY_SHAPE = ModelShape()
"""The 2-layer, hidden-64 model the test suite uses: builds in a few seconds."""

FULL_SHAPE = ModelShape(
    num_hidden_layers=24,
    hidden_size=1024,
    num_attention_heads=16,
    intermediate_size=4096,
    vocab_size=250002,
    initializer_range=0.02,
)
"""The real bge-reranker-v2-m3 architecture, for speed measurements (speed ignores weight values)."""

_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as in XLM-RoBERTa
_MASK_TOKEN = "<mask>"  # last id, as in XLM-RoBERTa

# Unicode blocks whose every character goes into the vocabulary.
_ALPHABET_RANGES: tuple[tuple[int, int], ...] = (
    (0x0021, 0x007E),  # Basic Latin, printable
    (0x00A1, 0x00FF),  # Latin-1 supplement
    (0x0100, 0x017F),  # Latin extended-A
    (0x0391, 0x03C9),  # Greek
    (0x0400, 0x04FF),  # Cyrillic
    (0x05D0, 0x05EA),  # Hebrew letters
    (0x0600, 0x06FF),  # Arabic
    (0x0900, 0x097F),  # Devanagari
    (0x0E01, 0x0E5B),  # Thai
    (0x2010, 0x2027),  # General punctuation (dashes, quotes, ellipsis)
    (0x3001, 0x3003),  # CJK punctuation
    (0x3041, 0x3096),  # Hiragana
    (0x30A1, 0x30FA),  # Katakana
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7A3),  # Hangul syllables
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog while the farmer sleeps under an old oak tree.
Retrieval augmented generation retrieves passages from an index and asks a language model to answer.
A cross-encoder reads the query and the passage together and returns a single relevance score.
Paris is the capital of France; Berlin is the capital of Germany; Madrid is the capital of Spain.
The mitochondria is the powerhouse of the cell and produces most of its chemical energy.
Water boils at one hundred degrees Celsius at sea level and freezes at zero degrees.
The Eiffel Tower was completed in 1889 and is 330 metres tall including its antennas.
Photosynthesis converts light energy into chemical energy stored in glucose molecules.
Der schnelle braune Fuchs springt über den faulen Hund, während die Sonne untergeht.
Berlin ist die Hauptstadt Deutschlands und hat ungefähr drei Komma sieben Millionen Einwohner.
Le renard brun rapide saute par-dessus le chien paresseux près de la rivière.
Paris est la capitale de la France et la ville la plus peuplée du pays.
El rápido zorro marrón salta sobre el perro perezoso en el jardín de la casa.
Madrid es la capital de España y su ciudad más poblada, situada en el centro de la península.
Быстрая коричневая лиса прыгает через ленивую собаку у старого дома.
Москва является столицей России и крупнейшим городом страны.
Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.
Η Αθήνα είναι η πρωτεύουσα της Ελλάδας και η μεγαλύτερη πόλη της.
الثعلب البني السريع يقفز فوق الكلب الكسول في الحديقة.
القاهرة هي عاصمة مصر وأكبر مدينة في العالم العربي.
השועל החום המהיר קופץ מעל הכלב העצלן ליד הבית.
ירושלים היא עיר הבירה של ישראל.
तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।
नई दिल्ली भारत की राजधानी है और एक बड़ा शहर है।
สุนัขจิ้งจอกสีน้ำตาลกระโดดข้ามสุนัขขี้เกียจ กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย
敏捷的棕色狐狸跳过了懒狗。北京是中华人民共和国的首都，也是重要的文化中心。
机器学习模型可以对查询和段落进行重新排序，以提高检索的质量。
素早い茶色の狐がのろまな犬を飛び越える。東京は日本の首都であり、最大の都市です。
検索拡張生成では、まず関連する文書を検索し、それから回答を生成します。
빠른 갈색 여우가 게으른 개를 뛰어넘는다. 서울은 대한민국의 수도이자 가장 큰 도시이다.
재순위 모델은 질문과 문서를 함께 읽고 관련성 점수를 계산합니다.
"""


def _alphabet() -> list[str]:
    return [chr(c) for start, stop in _ALPHABET_RANGES for c in range(start, stop + 1)]


def _corpus_lines(repeat: int = 4) -> Iterator[str]:
    lines = _CORPUS.splitlines()
    for _ in range(repeat):
        yield from lines


def _train_vocab(extra_pieces: int) -> list[tuple[str, float]]:
    """Train a Unigram vocabulary laid out like XLM-RoBERTa's (specials first, ``<mask>`` last)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    alphabet = _alphabet()
    tokenizer = Tokenizer(models.Unigram())
    # The same pre-tokenization XLMRobertaTokenizer (transformers 5) rebuilds at load time.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=len(alphabet) + extra_pieces,
        special_tokens=_SPECIAL_TOKENS,
        unk_token="<unk>",
        initial_alphabet=alphabet,
        max_piece_length=12,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_lines(), trainer=trainer)
    vocab = json.loads(tokenizer.to_str())["model"]["vocab"]
    pieces = [(str(piece), float(score)) for piece, score in vocab]
    specials = len(_SPECIAL_TOKENS)
    if [p for p, _ in pieces[:specials]] != _SPECIAL_TOKENS:
        raise RuntimeError("unexpected special-token layout in the trained vocabulary")
    # The trainer is not deterministic: it adds the single characters it must keep in hash-set
    # order, with scores that depend on that order, and its learned scores differ in the last bits
    # from run to run, so ids (and some segmentations) changed from one build to the next. Here
    # learned multi-character pieces are rounded and ordered by score, then single characters
    # follow with one score below all of them, in code point order: the same code builds the same
    # tokenizer. Every alphabet character is a piece of its own, so only foreign text maps to <unk>.
    learned = sorted(
        ((p, round(score, 6)) for p, score in pieces[specials:] if len(p) > 1), key=lambda x: (-x[1], x[0])
    )
    floor = min((score for _, score in learned), default=0.0) - 1.0
    chars = sorted({p for p, _ in pieces[specials:] if len(p) == 1} | set(alphabet))
    return [*pieces[:specials], *learned, *((ch, floor) for ch in chars), (_MASK_TOKEN, 0.0)]


# Bumped whenever the same shape and seed would build different files (2: reproducible tokenizer).
_BUILD_VERSION = 2


def model_marker(shape: ModelShape = TINY_SHAPE, seed: int = 0) -> dict[str, Any]:
    """What :func:`build_test_model` writes to ``bge_test_model.json`` for these arguments.

    A folder whose marker equals this holds exactly the model they build; callers that cache builds
    compare it.
    """
    return {"build": _BUILD_VERSION, "seed": seed, **asdict(shape)}


def build_test_model(
    folder: str | Path,
    *,
    shape: ModelShape = TINY_SHAPE,
    seed: int = 0,
    extra_pieces: int = 2000,
) -> Path:
    """Write a random XLM-RoBERTa cross-encoder and its trained tokenizer into ``folder``.

    The result loads with ``Reranker(folder)`` or any ``from_pretrained``, offline. The same seed and
    shape give the same files: weights and tokenizer. Returns the folder.

    Args:
        folder: Where to write ``config.json``, ``model.safetensors`` and the tokenizer files.
        shape: Architecture; ``TINY_SHAPE`` for tests, ``FULL_SHAPE`` for realistic speed.
        seed: Seed of the weight initialisation.
        extra_pieces: Learned sub-word pieces on top of the single characters.
    """
    import torch
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
        XLMRobertaTokenizer,
    )

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    vocab = _train_vocab(extra_pieces)
    tokenizer = XLMRobertaTokenizer(vocab=vocab, model_max_length=shape.max_position_embeddings - 2)
    tokenizer.save_pretrained(out)

    vocab_size = max(len(vocab), shape.vocab_size or 0)
    config = XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position_embeddings,
        type_vocab_size=1,
        initializer_range=shape.initializer_range,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
    )
    config.num_labels = 1  # one relevance logit, as bge-reranker-v2-m3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = XLMRobertaForSequenceClassification(config)
    model.save_pretrained(out)
    (out / "bge_test_model.json").write_text(json.dumps(model_marker(shape, seed), indent=2))
    return out


# --- Decoder-only rerankers (bge-reranker-v2-gemma, -v2-minicpm-layerwise, -v2.5-gemma2-lightweight) ---

DecoderKind = KindName
"""The decoder-only reranker kinds (as in :data:`bge_rerank_integrations.llm_layout.LLM_KINDS`)."""

DECODER_KINDS: tuple[DecoderKind, ...] = tuple(LLM_KINDS)


@dataclass(frozen=True, kw_only=True)
class DecoderShape:
    """Architecture of a random decoder-only reranker of one kind (defaults: a 2-layer toy)."""

    kind: DecoderKind
    num_hidden_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_key_value_heads: int = 1
    """MiniCPM has no grouped-query attention; its builds use ``num_attention_heads`` here."""
    head_dim: int = 16
    """MiniCPM derives it (``hidden_size // num_attention_heads``); the Gemma kinds take it as given."""
    intermediate_size: int = 128
    vocab_size: int | None = None
    """Embedding rows; ``None`` uses the trained tokenizer's size (a larger value is padded)."""
    max_position_embeddings: int = 8192
    start_layer: int = 1
    """Layer-wise kinds: the first layer with a score head (``cutoff_layers`` may name it and later ones)."""
    initializer_range: float = 0.3
    """Weight scale; larger than the real 0.02 so random scores spread."""


TINY_DECODER_SHAPES: Mapping[DecoderKind, DecoderShape] = {
    "v2-gemma": DecoderShape(kind="v2-gemma"),
    "v2-minicpm-layerwise": DecoderShape(
        kind="v2-minicpm-layerwise", num_hidden_layers=4, num_key_value_heads=4, start_layer=2
    ),
    "v2.5-gemma2-lightweight": DecoderShape(
        kind="v2.5-gemma2-lightweight", num_hidden_layers=4, num_key_value_heads=2, start_layer=2
    ),
}
"""Tiny random models of each decoder kind for tests: each builds in a few seconds."""

FULL_DECODER_SHAPES: Mapping[DecoderKind, DecoderShape] = {
    # Gemma-2B, as BAAI/bge-reranker-v2-gemma publishes it.
    "v2-gemma": DecoderShape(
        kind="v2-gemma",
        num_hidden_layers=18,
        hidden_size=2048,
        num_attention_heads=8,
        num_key_value_heads=1,
        head_dim=256,
        intermediate_size=16384,
        vocab_size=256000,
        max_position_embeddings=8192,
        initializer_range=0.02,
    ),
    # MiniCPM-2B with score heads from layer 8 (BAAI/bge-reranker-v2-minicpm-layerwise).
    "v2-minicpm-layerwise": DecoderShape(
        kind="v2-minicpm-layerwise",
        num_hidden_layers=40,
        hidden_size=2304,
        num_attention_heads=36,
        num_key_value_heads=36,
        head_dim=64,
        intermediate_size=5760,
        vocab_size=122753,
        max_position_embeddings=2048,
        start_layer=8,
        initializer_range=0.02,
    ),
    # Gemma-2-9B with score heads from layer 8 (BAAI/bge-reranker-v2.5-gemma2-lightweight).
    "v2.5-gemma2-lightweight": DecoderShape(
        kind="v2.5-gemma2-lightweight",
        num_hidden_layers=42,
        hidden_size=3584,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
        intermediate_size=14336,
        vocab_size=256000,
        max_position_embeddings=8192,
        start_layer=8,
        initializer_range=0.02,
    ),
}
"""The real architectures, for speed measurements (speed ignores weight values). Building one takes
about 4 bytes of memory and disk per parameter (fp32): 10 GB for v2-gemma, 37 GB for the 9B one."""

_GEMMA_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]  # ids 0..4, as in Gemma
_BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]  # byte fallback: text outside the vocabulary

# Lines only the decoder tokenizer trains on (the XLM-RoBERTa one must stay as it is): the words of
# FlagEmbedding's prompts, and "Yes" on its own so that it becomes one token as in Gemma's vocabulary.
_DECODER_CORPUS = """\
Given a query A and a passage B, determine whether the passage contains an answer to the query.
Provide a prediction of either 'Yes' or 'No'. Predict whether passage B contains an answer to query A.
Yes. No. Yes, the passage answers the query. No, it does not. Yes or No?
"""

# FlagEmbedding's copies of the custom model code of the two remote-code kinds (the files the model
# repositories ship), and the auto_map that points transformers at them.
_REMOTE_CODE: Mapping[DecoderKind, tuple[tuple[str, ...], dict[str, str], str, str]] = {
    "v2-minicpm-layerwise": (
        ("configuration_minicpm_reranker.py", "modeling_minicpm_reranker.py"),
        {
            "AutoConfig": "configuration_minicpm_reranker.LayerWiseMiniCPMConfig",
            "AutoModel": "modeling_minicpm_reranker.LayerWiseMiniCPMModel",
            "AutoModelForCausalLM": "modeling_minicpm_reranker.LayerWiseMiniCPMForCausalLM",
        },
        "minicpm",
        "LayerWiseMiniCPMForCausalLM",
    ),
    "v2.5-gemma2-lightweight": (
        ("gemma_config.py", "gemma_model.py"),
        {
            "AutoConfig": "gemma_config.CostWiseGemmaConfig",
            "AutoModel": "gemma_model.CostWiseGemmaModel",
            "AutoModelForCausalLM": "gemma_model.CostWiseGemmaForCausalLM",
        },
        "cost_wise_gemma",
        "CostWiseGemmaForCausalLM",
    ),
}

# Bumped whenever the same shape and seed would build different decoder files.
_DECODER_BUILD_VERSION = 1


def _train_bpe(extra_pieces: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-fallback BPE vocabulary laid out like Gemma's: specials, bytes, then pieces."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Gemma's normalizer; training splits words before each "▁" and at punctuation so that no
    # piece spans two words (GemmaTokenizer itself does not pre-split, so the merges must not).
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("▁", "merged_with_next"), pre_tokenizers.Punctuation()]
    )
    alphabet = [*_alphabet(), "\n", "▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=len(_GEMMA_SPECIAL_TOKENS) + len(alphabet) + extra_pieces,
        special_tokens=_GEMMA_SPECIAL_TOKENS,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    lines = [*_corpus_lines(), *_DECODER_CORPUS.splitlines() * 4]
    tokenizer.train_from_iterator(lines, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    learned = [
        p for p, _ in sorted(model["vocab"].items(), key=lambda x: x[1]) if p not in _GEMMA_SPECIAL_TOKENS
    ]
    vocab = {p: i for i, p in enumerate([*_GEMMA_SPECIAL_TOKENS, *_BYTE_TOKENS, *learned])}
    merges = [(str(a), str(b)) for a, b in model["merges"]]
    if "Yes" not in vocab:
        raise RuntimeError("the trained decoder vocabulary has no single 'Yes' token")
    return vocab, merges


def _flag_embedding_models_dir() -> Path:
    """Where the installed FlagEmbedding keeps its copies of the remote model code (not imported)."""
    spec = importlib.util.find_spec("FlagEmbedding")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "building the layer-wise decoder test models needs FlagEmbedding (the dev extra): its "
            "copies of the models' remote code are written next to the random weights"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "inference/reranker/decoder_only/models"


def decoder_model_marker(shape: DecoderShape, seed: int = 0) -> dict[str, Any]:
    """What :func:`build_decoder_test_model` writes to ``bge_test_model.json`` for these arguments.

    For the remote-code kinds it includes the hash of each copied modeling file, so a folder built
    with another FlagEmbedding version does not pass for this one.
    """
    marker: dict[str, Any] = {"build": _DECODER_BUILD_VERSION, "seed": seed, **asdict(shape)}
    if shape.kind in _REMOTE_CODE:
        source = _flag_embedding_models_dir()
        files = _REMOTE_CODE[shape.kind][0]
        marker["remote_code"] = {f: hashlib.sha256((source / f).read_bytes()).hexdigest() for f in files}
    return marker


def build_decoder_test_model(
    folder: str | Path,
    *,
    shape: DecoderShape,
    seed: int = 0,
    extra_pieces: int = 2000,
) -> Path:
    """Write a random decoder-only reranker of ``shape.kind`` and its trained tokenizer into ``folder``.

    v2-gemma is a plain ``GemmaForCausalLM``. The layer-wise kinds get FlagEmbedding's copy of their
    modeling code next to ``config.json`` (whose ``auto_map`` names it), so ``from_pretrained`` needs
    ``trust_remote_code=True``, as with the real repositories. The same seed and shape give the same
    files. Returns the folder.

    Args:
        folder: Where to write the config, weights, tokenizer and (layer-wise kinds) modeling code.
        shape: Kind and architecture; one of ``TINY_DECODER_SHAPES`` or ``FULL_DECODER_SHAPES``.
        seed: Seed of the weight initialisation.
        extra_pieces: Learned sub-word pieces on top of the single characters.
    """
    import torch
    from transformers import GemmaTokenizer

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = _train_bpe(extra_pieces)
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # annotated str | list[str]; `tokenizers` wants pairs
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=shape.max_position_embeddings,
    )
    tokenizer.save_pretrained(out)

    config = _decoder_config(shape, vocab_size=max(len(vocab), shape.vocab_size or 0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if shape.kind in _REMOTE_CODE:
            _write_remote_code_model(out, shape, config)
        else:
            from transformers import GemmaConfig, GemmaForCausalLM

            GemmaForCausalLM(GemmaConfig(**config)).save_pretrained(out)
    (out / "bge_test_model.json").write_text(json.dumps(decoder_model_marker(shape, seed), indent=2))
    return out


def _decoder_config(shape: DecoderShape, *, vocab_size: int) -> dict[str, Any]:
    """The ``config.json`` fields of a decoder kind (special-token ids as the trained tokenizer's)."""
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "max_position_embeddings": shape.max_position_embeddings,
        "initializer_range": shape.initializer_range,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    }
    if shape.kind == "v2-gemma":
        return {**common, "head_dim": shape.head_dim, "tie_word_embeddings": True}
    if shape.kind == "v2-minicpm-layerwise":
        if shape.hidden_size != shape.num_attention_heads * shape.head_dim:
            raise ValueError("MiniCPM needs hidden_size == num_attention_heads * head_dim")
        # MiniCPM-2B's scaling constants; one score head per layer from start_layer ("simple" heads).
        return {
            **common,
            "scale_emb": 12,
            "dim_model_base": 256,
            "scale_depth": 1.4,
            "start_layer": shape.start_layer,
            "head_multi": True,
            "head_type": "simple",
            "tie_word_embeddings": False,
        }
    # Gemma-2 with one score head per layer from start_layer (layer_sep 1), as the lightweight model.
    return {
        **common,
        "head_dim": shape.head_dim,
        "query_pre_attn_scalar": shape.head_dim,
        "start_layer": shape.start_layer,
        "layer_sep": 1,
        "layer_wise": True,
        "tie_word_embeddings": False,
    }


def _write_remote_code_model(out: Path, shape: DecoderShape, config: dict[str, Any]) -> None:
    """Copy the kind's modeling files into ``out`` and save a random model built through ``auto_map``.

    The copied code predates transformers 5, so two of its habits are worked around here, in the
    builder only: MiniCPM's attention reads ``config.rope_scaling["type"]``, which transformers 5
    answers with its standardized ``rope_parameters`` (no ``"type"`` key), so the config gets
    ``rope_parameters = None`` (plain RoPE, as the config says); and both classes declare
    ``_tied_weights_keys`` as a list, which ``save_pretrained`` of transformers 5 cannot read, so the
    weights are written with ``safetensors`` directly.
    """
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    files, auto_map, model_type, architecture = _REMOTE_CODE[shape.kind]
    source = _flag_embedding_models_dir()
    for name in files:
        shutil.copyfile(source / name, out / name)
    spec = {**config, "model_type": model_type, "architectures": [architecture], "auto_map": auto_map}
    (out / "config.json").write_text(json.dumps(spec, indent=2) + "\n")
    with warnings.catch_warnings():
        # The MiniCPM config assigns the deprecated `rope_scaling` attribute (a FutureWarning).
        warnings.simplefilter("ignore", FutureWarning)
        loaded = AutoConfig.from_pretrained(out, trust_remote_code=True)
        loaded.rope_parameters = None
        model = AutoModelForCausalLM.from_config(loaded, trust_remote_code=True)  # type: ignore[no-untyped-call]
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("folder", help="output folder")
    parser.add_argument("--full", action="store_true", help="the full-size shape of the model")
    parser.add_argument(
        "--kind", choices=DECODER_KINDS, help="a decoder-only kind (default: bge-reranker-v2-m3)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.kind:
        shapes = FULL_DECODER_SHAPES if args.full else TINY_DECODER_SHAPES
        path = build_decoder_test_model(args.folder, shape=shapes[args.kind], seed=args.seed)
    else:
        path = build_test_model(args.folder, shape=FULL_SHAPE if args.full else TINY_SHAPE, seed=args.seed)
    print(path)


if __name__ == "__main__":
    _main()
