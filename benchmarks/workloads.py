"""Deterministic, seeded reranking workloads with skewed, multilingual passages.

Passage lengths are drawn in tokens of the subject's tokenizer (log-normal: most passages short, a
long tail clipped at the length limit), and texts are built from whole words, single-spaced, with no
character outside the tokenizer's alphabet. So every text survives a decode and re-encode unchanged,
which matters because FlagEmbedding under transformers 5 re-tokenizes decoded text (GUIDE section 7):
on these texts every contender sees the same token ids.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SCALES", "Query", "Workload", "make_requests", "make_workloads"]

# Running text in the scripts the test tokenizer knows, by language. Words are drawn at random from a
# language's text, so passages have that language's token statistics (CJK and Thai pieces are short).
_TEXTS: dict[str, str] = {
    "en": (
        "A reranker reads a question together with one candidate passage and returns a single "
        "relevance score; sorting candidates by that score puts the useful evidence first. Search "
        "engines retrieve a few hundred documents cheaply with an inverted index or a vector index, "
        "and a cross-encoder reorders the best hundred of them before a language model writes an "
        "answer. The river flooded the old town twice in the last century, and the council built "
        "a stone wall along the eastern bank. Solar panels convert sunlight into electricity with "
        "an efficiency of about twenty percent on a clear summer day. The museum opens at nine in "
        "the morning and closes at six, except on public holidays when it stays open until eight."
    ),
    "de": (
        "Die Bibliothek der Stadt besitzt mehr als zweihunderttausend Bücher und eine große Sammlung "
        "alter Landkarten. Im Winter fällt in den Bergen oft so viel Schnee, dass die Straßen "
        "gesperrt werden müssen. Eine gute Suchmaschine findet zuerst viele Kandidaten und ordnet "
        "sie danach mit einem genaueren Modell neu."
    ),
    "fr": (
        "La cathédrale a été construite au douzième siècle et restaurée après l'incendie de 2019. "
        "Les chercheurs ont mesuré la température de l'océan pendant dix ans le long de la côte "
        "atlantique. Un bon système de recherche combine un index rapide et un modèle de "
        "classement plus précis."
    ),
    "es": (
        "El tren de alta velocidad une las dos ciudades en menos de tres horas y sale cada media "
        "hora desde la estación central. La cosecha de aceitunas empieza en noviembre y termina "
        "antes de las fiestas de invierno en muchos pueblos del sur."
    ),
    "ru": (
        "Библиотека университета открыта каждый день с восьми утра до десяти вечера, кроме "
        "воскресенья. Река замерзает в декабре, и жители переходят её по льду до самой весны. "
        "Поисковая система сначала находит кандидатов, а затем упорядочивает их точной моделью."
    ),
    "el": (
        "Το μουσείο της πόλης φιλοξενεί αγάλματα από την αρχαία εποχή και ένα μεγάλο αρχείο "
        "χειρογράφων. Το καλοκαίρι οι παραλίες γεμίζουν επισκέπτες από όλη την Ευρώπη."
    ),
    "ar": (
        "تقع المكتبة الوطنية في وسط المدينة وتضم آلاف المخطوطات القديمة والكتب النادرة. يبدأ موسم "
        "الحصاد في الخريف ويستمر حتى بداية الشتاء في معظم القرى الزراعية."
    ),
    "he": "הספרייה הלאומית נמצאת במרכז העיר ומחזיקה אלפי כתבי יד עתיקים וספרים נדירים.",
    "hi": "राष्ट्रीय पुस्तकालय शहर के केंद्र में स्थित है और इसमें हजारों पुरानी पांडुलिपियाँ रखी गई हैं।",
    "th": "ห้องสมุด แห่งชาติ ตั้งอยู่ ใจกลาง เมือง และ มี ต้นฉบับ โบราณ หลายพัน เล่ม",
    "zh": (
        "国家 图书馆 位于 城市 中心、收藏 了 数千 份 古代 手稿 和 珍贵 书籍。检索 系统 先 找到 候选 "
        "文档，再 用 更 精确 的 模型 重新 排序。"
    ),
    "ja": (
        "国立 図書館 は 市 の 中心 に あり、数千 点 の 古い 写本 と 貴重 な 本 を 所蔵 して います。"
        "検索 システム は まず 候補 を 見つけ、次に 精密 な モデル で 並べ替え ます。"
    ),
    "ko": (
        "국립 도서관은 도시 중심에 있으며 수천 점의 오래된 필사본과 귀중한 책을 소장하고 있습니다. "
        "검색 시스템은 먼저 후보를 찾고 더 정확한 모델로 다시 정렬합니다."
    ),
}
# Half the passages in English, the rest spread over the other languages.
_WEIGHTS: dict[str, float] = {
    "en": 10.0,
    **{lang: 10.0 / (len(_TEXTS) - 1) for lang in _TEXTS if lang != "en"},
}


@dataclass(frozen=True)
class Query:
    """One reranking request: a query and its candidate passages."""

    query: str
    passages: tuple[str, ...]


@dataclass(frozen=True)
class Workload:
    """Requests to time, plus the scoring settings they need."""

    name: str
    description: str
    max_length: int
    requests: tuple[Query, ...]
    warmup: Query
    """Scored once, untimed, by every contender before its timed requests."""
    per_request: bool
    """True: each request is one call (latency per query). False: all pairs in one call (a batch job)."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_pairs(self) -> int:
        """Timed pairs."""
        return sum(len(r.passages) for r in self.requests)


@dataclass(frozen=True)
class Scale:
    """How much work each workload holds (the same recipe, more or fewer requests)."""

    interactive_queries: int
    throughput_queries: int
    passages: int
    long_queries: int
    long_passages: int
    long_min: int
    long_max: int


SCALES: dict[str, Scale] = {
    # minutes on 2 CPU cores with the reduced (6-layer, hidden-384) subject
    "cpu": Scale(
        interactive_queries=5,
        throughput_queries=4,
        passages=100,
        long_queries=2,
        long_passages=4,
        long_min=1024,
        long_max=8192,
    ),
    # the full bge-reranker-v2-m3 shape on one GPU
    "gpu": Scale(
        interactive_queries=20,
        throughput_queries=20,
        passages=100,
        long_queries=2,
        long_passages=16,
        long_min=1024,
        long_max=8192,
    ),
    # seconds, for the smoke test
    "smoke": Scale(
        interactive_queries=2,
        throughput_queries=2,
        passages=12,
        long_queries=1,
        long_passages=2,
        long_min=300,
        long_max=600,
    ),
}


class _TextMaker:
    """Builds texts of a target token count from whole words of one language."""

    def __init__(self, tokenizer: Any, rng: random.Random) -> None:
        self.rng = rng
        self.words: dict[str, list[tuple[str, int]]] = {}
        unk = tokenizer.token_to_id("<unk>")
        for lang, text in _TEXTS.items():
            words = list(dict.fromkeys(text.split()))
            encodings = tokenizer.encode_batch(words, add_special_tokens=False)
            # a word with an unknown character would not survive decode and re-encode: leave it out
            self.words[lang] = [
                (w, len(e.ids)) for w, e in zip(words, encodings, strict=True) if unk not in e.ids
            ]
        self.langs = list(_WEIGHTS)
        self.weights = [_WEIGHTS[lang] for lang in self.langs]

    def language(self) -> str:
        return self.rng.choices(self.langs, self.weights)[0]

    def text(self, lang: str, tokens: int) -> str:
        """Words of ``lang`` whose tokens add up to about ``tokens`` (never more)."""
        words = self.words[lang]
        out: list[str] = []
        total = 0
        while True:
            word, count = words[self.rng.randrange(len(words))]
            if out and total + count > tokens:
                break
            out.append(word)
            total += count
        return " ".join(out)


def _skewed_lengths(
    rng: random.Random, n: int, *, median: float, sigma: float, low: int, high: int
) -> list[int]:
    return [min(high, max(low, round(rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]


def _requests(
    maker: _TextMaker, n: int, passages: int, *, lengths: list[int] | None, max_length: int
) -> tuple[Query, ...]:
    rng = maker.rng
    out = []
    for _ in range(n):
        lang = maker.language()
        query = maker.text(lang, rng.randint(6, 24))
        budget = max_length - 4 - 24  # room for the query and the 4 special tokens
        sizes = lengths or _skewed_lengths(rng, passages, median=150, sigma=0.75, low=8, high=budget)
        texts = tuple(maker.text(lang if rng.random() < 0.5 else maker.language(), size) for size in sizes)
        out.append(Query(query, texts))
    return tuple(out)


def make_requests(model_folder: str | Path, n: int, passages: int, seed: int = 0) -> list[Query]:
    """``n`` seeded requests of ``passages`` skewed-length multilingual passages (the interactive recipe)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_folder) / "tokenizer.json"))
    maker = _TextMaker(tokenizer, random.Random(seed))
    return list(_requests(maker, n, passages, lengths=None, max_length=512))


def make_workloads(model_folder: str | Path, scale: str = "cpu", seed: int = 0) -> list[Workload]:
    """The three workloads (interactive, throughput, long) for the subject in ``model_folder``."""
    from tokenizers import Tokenizer

    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    sc = SCALES[scale]
    tokenizer = Tokenizer.from_file(str(Path(model_folder) / "tokenizer.json"))
    maker = _TextMaker(tokenizer, random.Random(seed))
    short = 512

    warm = _requests(maker, 1, sc.passages, lengths=None, max_length=short)[0]
    interactive = Workload(
        name="interactive",
        description=(
            f"1 query x {sc.passages} passages per call (RAG latency), {sc.interactive_queries} calls"
        ),
        max_length=short,
        requests=_requests(maker, sc.interactive_queries, sc.passages, lengths=None, max_length=short),
        warmup=warm,
        per_request=True,
    )
    throughput = Workload(
        name="throughput",
        description=f"{sc.throughput_queries} queries x {sc.passages} passages in one call (batch job)",
        max_length=short,
        requests=_requests(maker, sc.throughput_queries, sc.passages, lengths=None, max_length=short),
        warmup=warm,
        per_request=False,
    )
    long_max = sc.long_max
    rng = maker.rng
    long_requests: list[Query] = []
    for _ in range(sc.long_queries):
        # geometric steps from long_min to the limit, so that every octave is represented and the
        # longest passage nearly fills max_length; a little jitter keeps the lengths apart
        steps = max(1, sc.long_passages - 1)
        top = long_max - 40
        sizes = [
            round(sc.long_min * (top / sc.long_min) ** (i / steps) * rng.uniform(0.9, 1.0))
            for i in range(sc.long_passages)
        ]
        sizes[-1] = top
        long_requests += _requests(maker, 1, len(sizes), lengths=sizes, max_length=long_max)
    long_warm = _requests(maker, 1, 2, lengths=[sc.long_min, sc.long_min // 2], max_length=long_max)[0]
    long = Workload(
        name="long",
        description=(
            f"{sc.long_queries} x 1 query x {sc.long_passages} passages of {sc.long_min}-{sc.long_max} "
            f"tokens, max_length={long_max}"
        ),
        max_length=long_max,
        requests=tuple(long_requests),
        warmup=long_warm,
        per_request=True,
    )
    return [interactive, throughput, long]
