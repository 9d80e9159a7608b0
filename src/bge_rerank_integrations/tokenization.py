"""Token ids of (query, passage) pairs, built exactly as FlagEmbedding's ``FlagReranker`` builds them.

The reference cuts the query (no special tokens) to ``query_max_length`` and the passage to
``max_length``, then assembles ``<s> Q </s></s> P </s>`` trimming only the passage so the pair fits
``max_length``. We build the same ids directly from ids, with one batched call into the fast
tokenizer for all texts, instead of the reference's per-pair Python assembly (or, under
transformers 5, its decode-and-re-tokenize round trip, which is lossy for ``<unk>`` and empty text).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bge_rerank_integrations.errors import ModelLoadError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["PairEncoder", "PairTemplate", "private_tokenizer", "text_ids"]


@dataclass(frozen=True)
class PairTemplate:
    """Special tokens around a pair: ``prefix + query + middle + passage + suffix``."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]

    @property
    def num_special_tokens(self) -> int:
        """How many special tokens one pair adds (4 for XLM-RoBERTa)."""
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    @classmethod
    def probe(cls, tokenizer: Any) -> PairTemplate:
        """Read the pair layout off a ``transformers`` tokenizer by encoding a probe pair.

        Raises:
            ModelLoadError: the tokenizer needs token type ids or its layout cannot be read.
        """
        if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
            raise ModelLoadError(
                "this tokenizer needs token_type_ids (a BERT-style pair layout); only "
                "XLM-RoBERTa/RoBERTa-style cross-encoders such as BAAI/bge-reranker-v2-m3 are supported"
            )
        a = list(tokenizer("a", add_special_tokens=False)["input_ids"])
        b = list(tokenizer("b", add_special_tokens=False)["input_ids"])
        full = list(tokenizer("a", "b")["input_ids"])
        for i in range(len(full) - len(a) + 1):
            if full[i : i + len(a)] != a:
                continue
            for j in range(i + len(a), len(full) - len(b) + 1):
                if full[j : j + len(b)] == b:
                    return cls(
                        prefix=tuple(full[:i]),
                        middle=tuple(full[i + len(a) : j]),
                        suffix=tuple(full[j + len(b) :]),
                    )
        raise ModelLoadError(f"cannot read the pair layout of tokenizer {type(tokenizer).__name__}")


class PairEncoder:
    """Turns (query, passage) texts into reference-exact input ids, thread-safely.

    It owns a private copy of the fast tokenizer with truncation and padding switched off, so that
    concurrent callers never mutate shared tokenizer state ("Already borrowed"); the copy is never
    changed afterwards, so the encoders :meth:`with_lengths` makes share it.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: PairTemplate,
        *,
        max_length: int,
        query_max_length: int,
    ) -> None:
        """Wrap a ``tokenizers.Tokenizer`` (copied, so the caller's stays untouched)."""
        _check_lengths(template, max_length, query_max_length)
        self._tokenizer = private_tokenizer(tokenizer)
        self.template = template
        self.max_length = max_length
        self.query_max_length = query_max_length

    def with_lengths(self, *, max_length: int, query_max_length: int) -> PairEncoder:
        """This encoder with other length limits, sharing its tokenizer (which is never mutated)."""
        _check_lengths(self.template, max_length, query_max_length)
        resized = copy.copy(self)
        resized.max_length = max_length
        resized.query_max_length = query_max_length
        return resized

    @classmethod
    def from_transformers(cls, tokenizer: Any, *, max_length: int, query_max_length: int) -> PairEncoder:
        """Build from a ``transformers`` fast tokenizer (``AutoTokenizer.from_pretrained``)."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ModelLoadError(
                f"{type(tokenizer).__name__} is not backed by the `tokenizers` library; "
                "a fast tokenizer (tokenizer.json) is required"
            )
        return cls(
            backend,
            PairTemplate.probe(tokenizer),
            max_length=max_length,
            query_max_length=query_max_length,
        )

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
        """Return the input ids of each pair, in input order (passages truncated as the reference does)."""
        out: list[list[int]] = []
        for q_ids, p_ids, room in self._pieces(pairs):
            out.append(self._assemble(q_ids, p_ids[:room]))
        return out

    def encode_windows(
        self, pairs: Sequence[tuple[str, str]], *, overlap: int, max_windows: int
    ) -> tuple[list[list[int]], list[int]]:
        """Ids of overlapping passage windows, each paired with the query, and each window's pair index.

        A passage that fits gives one window, identical to :meth:`encode`. A longer one is cut into
        windows that fill the pair, consecutive windows sharing ``overlap`` tokens, at most
        ``max_windows`` of them from the start of the passage.
        """
        ids: list[list[int]] = []
        owners: list[int] = []
        for index, (q_ids, p_ids, room) in enumerate(self._pieces(pairs)):
            step = max(1, room - overlap)
            starts = range(0, max(1, len(p_ids) - overlap), step) if len(p_ids) > room else range(1)
            for start in starts[:max_windows]:
                ids.append(self._assemble(q_ids, p_ids[start : start + room]))
                owners.append(index)
        return ids, owners

    def _pieces(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int], int]]:
        """Per pair: the cut query ids, all passage ids, and the passage room left in ``max_length``."""
        if not pairs:
            return []
        queries = list(dict.fromkeys(q for q, _ in pairs))  # usually one query for many passages
        query_ids = {
            q: ids[: self.query_max_length] for q, ids in zip(queries, self._ids(queries), strict=True)
        }
        passage_ids = self._ids([p for _, p in pairs])
        room = self.max_length - self.template.num_special_tokens
        return [
            (query_ids[q], p_ids, room - len(query_ids[q]))
            for (q, _), p_ids in zip(pairs, passage_ids, strict=True)
        ]

    def _assemble(self, q_ids: list[int], p_ids: list[int]) -> list[int]:
        t = self.template
        return [*t.prefix, *q_ids, *t.middle, *p_ids, *t.suffix]

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return text_ids(self._tokenizer, texts)


def private_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of ``tokenizer`` with truncation and padding off, so concurrent callers share no state."""
    from tokenizers import Tokenizer

    own = Tokenizer.from_str(tokenizer.to_str())
    own.no_truncation()
    own.no_padding()
    return own


def text_ids(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Ids of each text without special tokens, in one batched call; lone surrogates read as U+FFFD.

    A lone surrogate (from broken UTF-16 or ``surrogateescape`` decoding) is not valid Unicode and
    the Rust tokenizer refuses the whole batch, so such a batch is encoded again with U+FFFD in its
    place (the references raise instead).
    """
    try:
        encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    except TypeError:
        clean = [_LONE_SURROGATE.sub("\ufffd", t) for t in texts]
        encodings = tokenizer.encode_batch_fast(clean, add_special_tokens=False)
    return [e.ids for e in encodings]


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_lengths(template: PairTemplate, max_length: int, query_max_length: int) -> None:
    if query_max_length + template.num_special_tokens > max_length:
        raise ValueError(
            f"query_max_length ({query_max_length}) plus {template.num_special_tokens} special "
            f"tokens exceeds max_length ({max_length})"
        )
