"""Input ids of the decoder kinds identical to FlagEmbedding's own construction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from bge_rerank_integrations.errors import ModelLoadError
from bge_rerank_integrations.llm_layout import LLM_KINDS, LLMPairEncoder
from tests.core.texts import LONG_PASSAGE, LONG_QUERY, PASSAGES, QUERIES

from .pairs import UNUSUAL, all_pairs
from .reference import KINDS, REFERENCE_WARNINGS, flag_reranker, reference_ids

pytestmark = REFERENCE_WARNINGS


@pytest.fixture(scope="module")
def tokenizer(decoder_dirs: dict[str, Path]) -> Any:
    return AutoTokenizer.from_pretrained(decoder_dirs["v2-gemma"])


def tokens(tokenizer: Any, encoder: LLMPairEncoder, query: str, passage: str) -> list[str]:
    (ids,) = encoder.encode([(query, passage)]).ids
    return tokenizer.convert_ids_to_tokens(ids)  # type: ignore[no-any-return]


def test_exact_ids_of_hand_written_pairs(tokenizer: Any) -> None:
    encoder = LLMPairEncoder.from_transformers(
        tokenizer, LLM_KINDS["v2-gemma"], max_length=6, query_max_length=4, prompt="Yes or No?"
    )
    prompt = ["\n", "Yes", "▁or", "▁No", "?"]
    # <bos>, "A: " + query cut to 4 tokens, "\n", "B: " + passage cut to 6 tokens, "\n", the prompt.
    assert tokens(tokenizer, encoder, "the capital", "Paris is the capital of France") == [
        "<bos>", "A", ":", "▁the", "▁capital", "\n", "B", ":", "▁", "Paris", "▁is", *prompt,
    ]  # fmt: skip
    assert tokens(tokenizer, encoder, "the capital", "") == [
        "<bos>", "A", ":", "▁the", "▁capital", "\n", "B", ":", "▁", *prompt,
    ]  # fmt: skip
    assert tokens(tokenizer, encoder, "北京", "北京是首都") == [
        "<bos>", "A", ":", "▁", "北", "\n", "B", ":", "▁", "北京是", "首都", *prompt,
    ]  # fmt: skip
    assert encoder.yes_id == tokenizer.convert_tokens_to_ids("Yes")
    assert encoder.encode([("the capital", "")]).query_lengths == [6]  # <bos> + 4 + "\n"
    assert encoder.encode([("the capital", "")]).prompt_lengths == [5]


def test_bos_only_when_distinct_from_pad_for_gemma_and_always_for_layerwise(tokenizer: Any) -> None:
    backend = tokenizer.backend_tokenizer
    same = {"bos_id": 2, "pad_id": 2, "max_length": 6, "query_max_length": 4, "prompt": "No"}
    gemma = LLMPairEncoder(backend, LLM_KINDS["v2-gemma"], **same)
    assert tokens(tokenizer, gemma, "q", "p") == ["A", ":", "▁", "q", "\n", "B", ":", "▁p", "\n", "No"]
    for kind in ("v2-minicpm-layerwise", "v2.5-gemma2-lightweight"):
        layerwise = LLMPairEncoder(backend, LLM_KINDS[kind], **same)
        assert tokens(tokenizer, layerwise, "q", "p")[0] == "<bos>"
        with pytest.raises(ModelLoadError, match="<bos>"):
            LLMPairEncoder(backend, LLM_KINDS[kind], bos_id=None, pad_id=0)


def test_a_query_that_fills_the_budget_leaves_the_passage_whole(tokenizer: Any) -> None:
    # prepare_for_model trims only the passage side, and not at all when that would remove all of it.
    encoder = LLMPairEncoder.from_transformers(
        tokenizer, LLM_KINDS["v2-gemma"], max_length=3, query_max_length=40, prompt="No"
    )
    assert tokens(tokenizer, encoder, "the capital of France and of Germany", "Paris is the capital") == [
        "<bos>", "A", ":", "▁the", "▁capital", "▁of", "▁France", "▁and", "▁of", "▁Germany",
        "\n", "B", ":", "▁", "\n", "No",
    ]  # fmt: skip
    ids = encoder.encode([(LONG_QUERY, LONG_PASSAGE)]).ids[0]
    assert len(ids) == encoder.longest == 1 + 40 + 1 + 3 + 1 + 1


SHARED_SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "short": {"max_length": 24, "query_max_length": 6, "prompt": "Answer Yes or No."},
    "long-query": {"max_length": 8, "query_max_length": 64},  # the query alone can exceed the budget
}
INSTRUCTIONS = {  # handled by shared code: checked on one kind
    "max_length": 40,
    "query_instruction_for_rerank": "Query: ",
    "query_instruction_format": "{}\\n{}",
    "passage_instruction_for_rerank": None,
}
CASES = [
    *(
        pytest.param(kind, config, id=f"{kind}-{name}")
        for kind in KINDS
        for name, config in SHARED_SETTINGS.items()
    ),
    pytest.param("v2-gemma", INSTRUCTIONS, id="v2-gemma-instructions"),
]


def encoder_settings(reference: dict[str, Any]) -> dict[str, Any]:
    """The same settings under this package's names."""
    names = {
        "query_instruction_for_rerank": "query_instruction",
        "passage_instruction_for_rerank": "passage_instruction",
    }
    return {names.get(k, k): v for k, v in reference.items()}


@pytest.mark.parametrize(("kind", "config"), CASES)
def test_ids_match_flagembedding(kind: str, config: dict[str, Any], decoder_dirs: dict[str, Path]) -> None:
    reference = flag_reranker(kind, decoder_dirs[kind], **config)
    encoder = LLMPairEncoder.from_transformers(
        reference.tokenizer, LLM_KINDS[kind], **encoder_settings(config)
    )
    pairs = all_pairs()
    expected = reference_ids(reference, pairs)
    encoded = encoder.encode(pairs)
    assert encoded.ids == [e["ids"] for e in expected]
    assert max(map(len, encoded.ids)) <= encoder.longest
    if kind == "v2.5-gemma2-lightweight":
        assert encoded.query_lengths == [e["query_lengths"] for e in expected]
        assert encoded.prompt_lengths == [e["prompt_lengths"] for e in expected]


def test_ids_match_flagembedding_when_the_tokenizer_truncates_on_the_left(
    decoder_dirs: dict[str, Path],
) -> None:
    reference = flag_reranker("v2-gemma", decoder_dirs["v2-gemma"], max_length=12, query_max_length=5)
    reference.tokenizer.truncation_side = "left"
    encoder = LLMPairEncoder.from_transformers(
        reference.tokenizer, LLM_KINDS["v2-gemma"], max_length=12, query_max_length=5
    )
    assert encoder.truncation_side == "left"
    pairs = all_pairs()
    assert encoder.encode(pairs).ids == [e["ids"] for e in reference_ids(reference, pairs)]


def test_yes_id_is_the_references(decoder_dirs: dict[str, Path]) -> None:
    reference = flag_reranker("v2-gemma", decoder_dirs["v2-gemma"])
    assert (
        LLMPairEncoder.from_transformers(reference.tokenizer, LLM_KINDS["v2-gemma"]).yes_id
        == reference.yes_loc
    )


@settings(max_examples=15, deadline=None)
@given(
    max_length=st.integers(min_value=1, max_value=40),
    query_max_length=st.integers(min_value=1, max_value=60),
    pair=st.tuples(
        st.sampled_from([*QUERIES, *UNUSUAL, LONG_QUERY]), st.sampled_from([*PASSAGES, LONG_PASSAGE])
    ),
)
def test_longest_bounds_every_pair(tokenizer: Any, max_length: int, query_max_length: int, pair: Any) -> None:
    for kind in (LLM_KINDS["v2-gemma"], LLM_KINDS["v2.5-gemma2-lightweight"]):  # the two prompts
        encoder = LLMPairEncoder.from_transformers(
            tokenizer, kind, max_length=max_length, query_max_length=query_max_length
        )
        assert len(encoder.encode([pair]).ids[0]) <= encoder.longest


def test_a_lone_surrogate_is_encoded_as_the_replacement_character(tokenizer: Any) -> None:
    encoder = LLMPairEncoder.from_transformers(tokenizer, LLM_KINDS["v2-gemma"])
    assert encoder.encode([("q\ud800", "a\udfffb")]) == encoder.encode([("q\ufffd", "a\ufffdb")])


def test_encoding_many_pairs_equals_encoding_each(tokenizer: Any) -> None:
    encoder = LLMPairEncoder.from_transformers(tokenizer, LLM_KINDS["v2.5-gemma2-lightweight"], max_length=30)
    pairs = all_pairs()
    together = encoder.encode(pairs)
    alone = [encoder.encode([pair]) for pair in pairs]
    assert together.ids == [a.ids[0] for a in alone]
    assert together.query_lengths == [a.query_lengths[0] for a in alone]
    assert encoder.encode([]).ids == []


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"max_length": 0}, "max_length"),
        ({"query_max_length": 0}, "query_max_length"),
        ({"truncation_side": "middle"}, "truncation_side"),
        ({"query_instruction_format": "{}{}{}"}, "instruction format"),
    ],
)
def test_bad_settings_are_refused(tokenizer: Any, settings_: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LLMPairEncoder.from_transformers(tokenizer, LLM_KINDS["v2-gemma"], **settings_)
