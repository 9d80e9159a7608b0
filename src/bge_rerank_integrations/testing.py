"""Build small random bge-reranker-shaped models offline, for tests, examples and benchmarks.

The Hugging Face hub is not always reachable (CI, air-gapped boxes), yet every code path of this
package should run against a real XLM-RoBERTa cross-encoder and a real trained fast tokenizer. This
module trains a Unigram tokenizer with the ``tokenizers`` library on a built-in multilingual corpus,
puts every character of its alphabets in the vocabulary (so ``<unk>`` stays rare, as with the real
250k vocabulary), and saves a randomly initialised ``XLMRobertaForSequenceClassification`` with one
label, in any size up to the full bge-reranker-v2-m3 shape.

Run ``python -m bge_rerank_integrations.testing FOLDER`` to write the default tiny model.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["FULL_SHAPE", "TINY_SHAPE", "ModelShape", "build_test_model", "model_marker"]


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


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("folder", help="output folder")
    parser.add_argument("--full", action="store_true", help="the full bge-reranker-v2-m3 shape")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = build_test_model(args.folder, shape=FULL_SHAPE if args.full else TINY_SHAPE, seed=args.seed)
    print(path)


if __name__ == "__main__":
    _main()
