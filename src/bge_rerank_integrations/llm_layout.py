"""Input ids of (query, passage) pairs for the decoder-only BGE rerankers, exactly as FlagEmbedding builds.

The reference (FlagEmbedding 1.4.2 ``FlagLLMReranker``, ``LayerWiseFlagLLMReranker``,
``LightWeightFlagLLMReranker``) builds, for each pair:

1. ``q = query_instruction_format.format("A: ", query)`` and ``p = ...format("B: ", passage)``
   (``AbsReranker.get_detailed_inputs``; the default format ``"{}{}"`` simply prefixes), each tokenized
   alone without special tokens and cut to ``query_max_length`` (default ``max_length * 3 // 4``) and
   ``max_length`` tokens, on the tokenizer's truncation side.
2. ``first = [<bos>] + q`` and ``second = sep + p``, where ``sep`` is the ids of ``"\\n"``. v2-gemma
   adds ``<bos>`` only when the tokenizer has one distinct from its pad token; the two layer-wise
   kinds always add it.
3. ``prepare_for_model(first, second, truncation="only_second", max_length=max_length + len(sep) +
   len(prompt))``: only ``second`` is trimmed (from the truncation side), and left whole when it is
   not longer than the excess (the legacy tokenizer's rule).
4. ``ids = first + second + sep + prompt``, the prompt being a setting with a per-kind default.

v2-gemma scores the logit of ``Yes`` (the first id of ``"Yes"``) at the last position; the layer-wise
kinds score one head per chosen layer at the last position, and the lightweight one can merge
passage tokens, for which it needs each pair's ``len([<bos>] + q + sep)`` and ``len(sep + prompt)``
(:class:`LLMPairs`). Here the ids come from one batched call into the fast tokenizer for all texts
instead of the reference's per-pair Python assembly.

The facts each decoder kind needs are in :data:`LLM_KINDS` (``LLMKind``): the default prompt,
whether ``<bos>`` is unconditional, the padding side, the kind's options and the config fields that
identify it (:func:`detect_llm_kind`). The kinds themselves (load, options, forward) are in
:mod:`bge_rerank_integrations.kinds.llm`; note that ``max_length`` bounds the passage here, not the
pair, as in FlagEmbedding.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from bge_rerank_integrations.errors import ModelLoadError
from bge_rerank_integrations.tokenization import private_tokenizer, text_ids

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "GEMMA_PROMPT",
    "LIGHTWEIGHT_PROMPT",
    "LLM_KINDS",
    "KindName",
    "LLMKind",
    "LLMPairEncoder",
    "LLMPairs",
    "detect_llm_kind",
]

GEMMA_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)
"""FlagEmbedding's default prompt for ``FlagLLMReranker`` and ``LayerWiseFlagLLMReranker``."""

LIGHTWEIGHT_PROMPT = "Predict whether passage B contains an answer to query A."
"""FlagEmbedding's default prompt for ``LightWeightFlagLLMReranker``."""

KindName = Literal["v2-gemma", "v2-minicpm-layerwise", "v2.5-gemma2-lightweight"]
"""The decoder-only kinds: v2-gemma (``FlagLLMReranker``), v2-minicpm-layerwise
(``LayerWiseFlagLLMReranker``), v2.5-gemma2-lightweight (``LightWeightFlagLLMReranker``)."""


@dataclass(frozen=True)
class LLMKind:
    """What one decoder-only reranker kind needs from the core, besides its layout and forward."""

    name: KindName
    default_prompt: str
    always_bos: bool
    """Add ``<bos>`` even when the tokenizer has none distinct from pad (the layer-wise references)."""
    padding_side: Literal["left", "right"]
    """Where this package's forward pads a batch (right: causal attention hides the padding)."""
    architectures: tuple[str, ...]
    """``config.architectures`` values of this kind."""
    model_types: tuple[str, ...]
    """``config.model_type`` values of this kind."""
    ships_remote_code: bool
    """The model repository ships custom modeling code (``auto_map``); this package does not run it."""
    options: tuple[str, ...]
    """Per-kind scoring options beyond the shared ones (``max_length``, ``query_max_length``)."""


LLM_KINDS: Mapping[KindName, LLMKind] = {
    "v2-gemma": LLMKind(
        name="v2-gemma",
        default_prompt=GEMMA_PROMPT,
        always_bos=False,
        padding_side="right",
        architectures=("GemmaForCausalLM",),
        model_types=("gemma",),
        ships_remote_code=False,
        options=("prompt",),
    ),
    "v2-minicpm-layerwise": LLMKind(
        name="v2-minicpm-layerwise",
        default_prompt=GEMMA_PROMPT,
        always_bos=True,
        padding_side="right",
        architectures=("LayerWiseMiniCPMForCausalLM",),
        model_types=("minicpm",),
        ships_remote_code=True,
        options=("prompt", "cutoff_layers"),
    ),
    "v2.5-gemma2-lightweight": LLMKind(
        name="v2.5-gemma2-lightweight",
        default_prompt=LIGHTWEIGHT_PROMPT,
        always_bos=True,
        padding_side="right",
        architectures=("CostWiseGemmaForCausalLM",),
        model_types=("cost_wise_gemma",),
        ships_remote_code=True,
        options=("prompt", "cutoff_layers", "compress_ratio", "compress_layers"),
    ),
}
"""The decoder-only kinds, by name."""


def detect_llm_kind(config: Mapping[str, Any]) -> LLMKind | None:
    """The decoder-only kind of a model from its ``config.json`` fields, or ``None`` if it is none of them.

    ``architectures`` decides; ``model_type`` is the fallback for configs without it. ``auto_map``
    is not needed: it only says where the custom code lives, not what the model is.
    """
    architectures = config.get("architectures") or ()
    for kind in LLM_KINDS.values():
        if any(a in kind.architectures for a in architectures):
            return kind
    if not architectures:
        for kind in LLM_KINDS.values():
            if config.get("model_type") in kind.model_types:
                return kind
    return None


@dataclass(frozen=True)
class LLMPairs:
    """Encoded pairs: input ids, and the lengths the lightweight kind's passage compression needs."""

    ids: list[list[int]]
    query_lengths: list[int]
    """``len([<bos>] + query ids + sep)`` per pair, as the reference computes it."""
    prompt_lengths: list[int]
    """``len(sep + prompt ids)`` per pair."""


class LLMPairEncoder:
    """Turns (query, passage) texts into a decoder kind's reference-exact input ids, thread-safely.

    It owns a private copy of the fast tokenizer with truncation and padding switched off, so that
    concurrent callers never mutate shared tokenizer state.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        kind: LLMKind,
        *,
        bos_id: int | None,
        pad_id: int | None,
        max_length: int = 512,
        query_max_length: int | None = None,
        prompt: str | None = None,
        query_instruction: str | None = "A: ",
        query_instruction_format: str = "{}{}",
        passage_instruction: str | None = "B: ",
        passage_instruction_format: str = "{}{}",
        truncation_side: Literal["left", "right"] = "right",
    ) -> None:
        """Wrap a ``tokenizers.Tokenizer`` (copied, so the caller's stays untouched).

        Args:
            tokenizer: The model's fast tokenizer.
            kind: Which reference's layout to build.
            bos_id: The tokenizer's ``<bos>`` id (``None`` if it has none).
            pad_id: The tokenizer's pad id; v2-gemma adds ``<bos>`` only when it differs from this.
            max_length: Passage tokens kept (FlagEmbedding's ``max_length``).
            query_max_length: Query tokens kept, instruction included; default ``max_length * 3 // 4``.
            prompt: The instruction after the passage; ``None`` is the kind's default.
            query_instruction: Text put before each query by ``query_instruction_format``.
            query_instruction_format: ``str.format`` template of (instruction, query); a literal
                ``\\n`` in it means a newline, as in FlagEmbedding.
            passage_instruction: Text put before each passage.
            passage_instruction_format: Template of (instruction, passage).
            truncation_side: The tokenizer's ``truncation_side`` (which end of a text is cut).
        """
        query_max_length = _checked_lengths(max_length, query_max_length)
        if truncation_side not in ("left", "right"):
            raise ValueError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
        if kind.always_bos and bos_id is None:
            raise ModelLoadError(f"the {kind.name} reranker needs a tokenizer with a <bos> token")
        self._tokenizer = private_tokenizer(tokenizer)
        self.kind = kind
        self.max_length = max_length
        self.query_max_length = query_max_length
        self.prompt = kind.default_prompt if prompt is None else prompt
        self.truncation_side = truncation_side
        self._query_template = _template(query_instruction, query_instruction_format)
        self._passage_template = _template(passage_instruction, passage_instruction_format)
        use_bos = bos_id is not None and (kind.always_bos or bos_id != pad_id)
        self.bos: tuple[int, ...] = (bos_id,) if use_bos and bos_id is not None else ()
        sep, prompt_ids, yes = self._ids(["\n", self.prompt, "Yes"])
        self.sep: tuple[int, ...] = tuple(sep)
        self.prompt_ids: tuple[int, ...] = tuple(prompt_ids)
        if not yes:
            raise ModelLoadError("the tokenizer encodes 'Yes' as no tokens at all")
        self.yes_id: int = yes[0]
        """The id whose logit v2-gemma scores: the first id of ``"Yes"``, as the reference takes it."""

    def with_settings(
        self, *, max_length: int, query_max_length: int | None = None, prompt: str | None = None
    ) -> LLMPairEncoder:
        """This encoder with other lengths or prompt, sharing its tokenizer (which is never mutated).

        The instruction templates, ``<bos>`` and truncation side stay; ``prompt=None`` is the kind's
        default prompt.
        """
        query_max_length = _checked_lengths(max_length, query_max_length)
        other = copy.copy(self)
        other.max_length = max_length
        other.query_max_length = query_max_length
        other.prompt = self.kind.default_prompt if prompt is None else prompt
        if other.prompt != self.prompt:
            (prompt_ids,) = self._ids([other.prompt])
            other.prompt_ids = tuple(prompt_ids)
        return other

    @classmethod
    def from_transformers(cls, tokenizer: Any, kind: LLMKind, **settings: Any) -> LLMPairEncoder:
        """Build from a ``transformers`` fast tokenizer (``AutoTokenizer.from_pretrained``)."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ModelLoadError(
                f"{type(tokenizer).__name__} is not backed by the `tokenizers` library; "
                "a fast tokenizer (tokenizer.json) is required"
            )
        settings.setdefault("truncation_side", getattr(tokenizer, "truncation_side", "right"))
        return cls(
            backend,
            kind,
            bos_id=tokenizer.bos_token_id,
            pad_id=tokenizer.pad_token_id,
            **settings,
        )

    @property
    def longest(self) -> int:
        """The most ids one pair can take with these settings (to check against the model's positions)."""
        head = len(self.bos) + self.query_max_length
        budget = self.max_length + len(self.sep) + len(self.prompt_ids)
        # The passage is trimmed to fit ``budget`` unless the query alone fills it (then it stays whole).
        body = budget if head < budget else head + len(self.sep) + self.max_length
        return body + len(self.sep) + len(self.prompt_ids)

    def encode(self, pairs: Sequence[tuple[str, str]]) -> LLMPairs:
        """Return the input ids (and compression lengths) of each pair, in input order."""
        if not pairs:
            return LLMPairs([], [], [])
        queries = list(dict.fromkeys(q for q, _ in pairs))  # usually one query for many passages
        query_ids = {
            q: self._cut(ids, self.query_max_length)
            for q, ids in zip(queries, self._ids([self._query_template(q) for q in queries]), strict=True)
        }
        passage_ids = self._ids([self._passage_template(p) for _, p in pairs])
        budget = self.max_length + len(self.sep) + len(self.prompt_ids)
        ids: list[list[int]] = []
        query_lengths: list[int] = []
        for (q, _), p_ids in zip(pairs, passage_ids, strict=True):
            first = [*self.bos, *query_ids[q]]
            second = [*self.sep, *self._cut(p_ids, self.max_length)]
            excess = len(first) + len(second) - budget
            if 0 < excess < len(second):
                second = second[excess:] if self.truncation_side == "left" else second[:-excess]
            ids.append([*first, *second, *self.sep, *self.prompt_ids])
            query_lengths.append(len(first) + len(self.sep))
        prompt_length = len(self.sep) + len(self.prompt_ids)
        return LLMPairs(ids, query_lengths, [prompt_length] * len(pairs))

    def _cut(self, ids: list[int], limit: int) -> list[int]:
        return ids[-limit:] if self.truncation_side == "left" else ids[:limit]

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return text_ids(self._tokenizer, texts)


def _checked_lengths(max_length: int, query_max_length: int | None) -> int:
    """``query_max_length`` resolved (``None``: the reference's ``max_length * 3 // 4``), both checked."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    if query_max_length is None:
        query_max_length = max_length * 3 // 4
    if query_max_length < 1:
        raise ValueError(f"query_max_length must be at least 1, got {query_max_length}")
    return query_max_length


def _template(instruction: str | None, template: str) -> Callable[[str], str]:
    """``AbsReranker.get_detailed_instruct`` as a function of the text (identity without instruction)."""
    if instruction is None:
        return lambda text: text
    fmt = template.replace("\\n", "\n")
    try:
        fmt.format(instruction, "")
    except (IndexError, KeyError, ValueError) as exc:
        raise ValueError(f"instruction format {template!r} must take two fields, '{{}}{{}}'-style") from exc
    return lambda text: fmt.format(instruction, text)
