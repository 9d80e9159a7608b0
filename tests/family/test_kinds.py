"""The decoder kinds behind the model-kind contract: detection, loading, options, FlagEmbedding's scores."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from bge_rerank_integrations.config import LoadSettings, ScoringOptions
from bge_rerank_integrations.errors import ModelLoadError
from bge_rerank_integrations.kinds.llm import (
    DecoderKind,
    DecoderModel,
    GemmaKind,
    LightweightGemma2Kind,
    LightweightRow,
    MiniCPMLayerwiseKind,
)

from .pairs import all_pairs, workload
from .reference import REFERENCE_WARNINGS, flag_reranker

pytestmark = REFERENCE_WARNINGS

PARITY = 1e-4  # as test_forward: this forward against FlagEmbedding's
INVARIANCE = {"abs": 1e-5, "rel": 1e-5}  # the core's bound for the same code in different batches

KIND_CLASSES: dict[str, type[DecoderKind]] = {
    "v2-gemma": GemmaKind,
    "v2-minicpm-layerwise": MiniCPMLayerwiseKind,
    "v2.5-gemma2-lightweight": LightweightGemma2Kind,
}
CPU = torch.device("cpu")


def load(kind: str, folder: Path, **settings: Any) -> DecoderModel:
    settings.setdefault("trust_remote_code", True)
    return KIND_CLASSES[kind].load(LoadSettings(model=str(folder), **settings), CPU, torch.float32)


@pytest.fixture(scope="module")
def loaded(decoder_dirs: dict[str, Path]) -> dict[str, DecoderModel]:
    return {kind: load(kind, folder) for kind, folder in decoder_dirs.items()}


def score(model: DecoderModel, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> list[float]:
    """Encode, then one forward over all rows: what the local backend does for one batch."""
    encoded = model.encode(pairs, options)
    assert list(encoded.lengths) == [len(row) for row in encoded.rows]
    assert encoded.owners is None
    logits = model.forward(encoded.rows, options)
    assert logits.dtype == torch.float32
    assert logits.shape == (len(pairs),)
    return logits.tolist()  # type: ignore[no-any-return]


def config_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", list(KIND_CLASSES))
def test_each_kind_matches_its_own_config_and_no_other(kind: str, decoder_dirs: dict[str, Path]) -> None:
    spec = config_of(decoder_dirs[kind])
    assert [name for name, cls in KIND_CLASSES.items() if cls.matches(spec)] == [kind]
    # The name a model was saved under decides nothing; only its architecture does.
    other = next(k for k in KIND_CLASSES if k != kind)
    assert KIND_CLASSES[kind].matches({**spec, "_name_or_path": f"BAAI/bge-reranker-{other}"})
    assert not KIND_CLASSES[other].matches({**spec, "_name_or_path": f"BAAI/bge-reranker-{other}"})
    assert KIND_CLASSES[kind].name == kind
    assert set(KIND_CLASSES[kind].architectures) == set(spec["architectures"])
    cross_encoder = {"architectures": ["XLMRobertaForSequenceClassification"], "model_type": "xlm-roberta"}
    assert not KIND_CLASSES[kind].matches(cross_encoder)


# Scores use short pairs: the reference computes the logits of the whole vocabulary at every position.
SHORT = {"max_length": 96}
PROMPT = {"max_length": 48, "query_max_length": 16, "prompt": "Does B answer A? Yes or No."}
CASES = [
    pytest.param("v2-gemma", SHORT, {}, id="gemma"),
    pytest.param("v2-gemma", PROMPT, {}, id="gemma-own-prompt"),
    pytest.param("v2-minicpm-layerwise", SHORT, {}, id="minicpm-default-layer"),
    pytest.param("v2-minicpm-layerwise", PROMPT, {"cutoff_layers": [2]}, id="minicpm-layer-2"),
    pytest.param("v2.5-gemma2-lightweight", SHORT, {}, id="lightweight-defaults"),
    pytest.param("v2.5-gemma2-lightweight", PROMPT, {"cutoff_layers": [3]}, id="lightweight-layer-3"),
    pytest.param(
        "v2.5-gemma2-lightweight",
        SHORT,
        {"cutoff_layers": [4], "compress_ratio": 2, "compress_layers": [1, 3]},
        id="lightweight-compress-2",
    ),
    pytest.param(
        "v2.5-gemma2-lightweight",
        PROMPT,
        {"compress_ratio": 4, "compress_layers": [2]},
        id="lightweight-compress-4",
    ),
]


@pytest.mark.parametrize(("kind", "layout", "options"), CASES)
def test_scores_through_the_loaded_model_match_flagembedding(
    kind: str,
    layout: dict[str, Any],
    options: dict[str, Any],
    decoder_dirs: dict[str, Path],
    loaded: dict[str, DecoderModel],
) -> None:
    pairs = all_pairs()
    expected = flag_reranker(kind, decoder_dirs[kind], **layout).compute_score(pairs, **options)
    ours = score(loaded[kind], pairs, ScoringOptions(**layout, **options))
    assert ours == pytest.approx(expected, abs=PARITY)
    assert len({round(s, 3) for s in ours}) > len(pairs) // 2  # distinct scores: a mix-up would show


def test_options_change_the_scores(loaded: dict[str, DecoderModel]) -> None:
    # Each kind option reaches the forward (else the parity cases above could pass on defaults).
    pairs = all_pairs()[:12]
    cases = [
        ("v2-gemma", {"prompt": "Yes or No?"}),
        ("v2-minicpm-layerwise", {"cutoff_layers": [3]}),
        ("v2.5-gemma2-lightweight", {"cutoff_layers": [3]}),
        ("v2.5-gemma2-lightweight", {"compress_ratio": 2, "compress_layers": [1]}),
    ]
    for kind, options in cases:
        default = score(loaded[kind], pairs, ScoringOptions())
        changed = score(loaded[kind], pairs, ScoringOptions(**options))
        assert changed != pytest.approx(default, abs=1e-3), (kind, options)
        # Going back to the defaults scores as before: the encoders of each option set stay apart.
        assert score(loaded[kind], pairs, ScoringOptions()) == default


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("v2-gemma", {}),
        ("v2-gemma", {"prompt": "Yes or No?", "max_length": 64}),
        ("v2-minicpm-layerwise", {"cutoff_layers": [3]}),
        ("v2.5-gemma2-lightweight", {"cutoff_layers": [4], "compress_ratio": 2, "compress_layers": [1, 2]}),
    ],
)
def test_a_score_does_not_depend_on_its_batch(
    kind: str, options: dict[str, Any], loaded: dict[str, DecoderModel]
) -> None:
    model, scoring = loaded[kind], ScoringOptions(**options)
    pairs = workload(201)
    encoded = model.encode(pairs, scoring)
    alone = [float(model.forward([row], scoring)[0]) for row in encoded.rows]
    assert model.forward(encoded.rows, scoring).tolist() == pytest.approx(alone, **INVARIANCE)
    # Rows sorted by length and cut in batches, as the backend plans them; and shuffled chunks.
    for order in (sorted(range(len(pairs)), key=lambda i: encoded.lengths[i]), _shuffled(len(pairs))):
        got = [0.0] * len(pairs)
        for start in range(0, len(order), 17):
            chunk = order[start : start + 17]
            for i, value in zip(
                chunk, model.forward([encoded.rows[i] for i in chunk], scoring).tolist(), strict=True
            ):
                got[i] = value
        assert got == pytest.approx(alone, **INVARIANCE)


def _shuffled(n: int) -> list[int]:
    order = list(range(n))
    random.Random(1).shuffle(order)
    return order


@pytest.mark.parametrize(
    ("kind", "options", "named"),
    [
        ("v2-gemma", {"cutoff_layers": [1]}, "cutoff_layers"),
        ("v2-gemma", {"compress_ratio": 2, "compress_layers": [1]}, "compress_layers, compress_ratio"),
        ("v2-minicpm-layerwise", {"compress_ratio": 2}, "compress_ratio"),
        ("v2-minicpm-layerwise", {"compress_layers": [1]}, "compress_layers"),
    ],
)
def test_an_option_of_another_kind_is_refused_by_name(
    kind: str, options: dict[str, Any], named: str, loaded: dict[str, DecoderModel]
) -> None:
    with pytest.raises(ValueError, match=f"^{named}: the {kind} reranker has no such option"):
        loaded[kind].encode([("q", "p")], ScoringOptions(**options))
    with pytest.raises(ValueError, match=named):  # and the forward refuses them as well
        loaded[kind].forward([[2, 5, 6]], ScoringOptions(**options))


@pytest.mark.parametrize("kind", list(KIND_CLASSES))
def test_window_mode_is_refused(kind: str, loaded: dict[str, DecoderModel]) -> None:
    with pytest.raises(ValueError, match="long_passages='window'"):
        loaded[kind].encode([("q", "p")], ScoringOptions(long_passages="window"))


@pytest.mark.parametrize("kind", ["v2-minicpm-layerwise", "v2.5-gemma2-lightweight"])
def test_layer_options_are_checked_against_the_model(kind: str, loaded: dict[str, DecoderModel]) -> None:
    model = loaded[kind]
    with pytest.raises(ValueError, match=r"cutoff_layers=\[2, 3\].*one score per passage"):
        model.encode([("q", "p")], ScoringOptions(cutoff_layers=(2, 3)))
    with pytest.raises(ValueError, match=r"layer 1 has no score head.*layers \[2, 3, 4\]"):
        model.encode([("q", "p")], ScoringOptions(cutoff_layers=1))
    with pytest.raises(ValueError, match=r"layer 9 has no score head"):
        model.encode([("q", "p")], ScoringOptions(cutoff_layers=9))
    assert score(model, [("q", "p")], ScoringOptions(cutoff_layers=4)) == score(
        model, [("q", "p")], ScoringOptions()
    )  # the last layer is the default


def test_compress_layers_outside_the_model_are_refused(loaded: dict[str, DecoderModel]) -> None:
    model = loaded["v2.5-gemma2-lightweight"]
    for layers in ((0,), (1, 4)):
        with pytest.raises(ValueError, match=r"compress_layers \[\d\].*layers 1\.\.3 of this 4-layer model"):
            model.encode([("q", "p")], ScoringOptions(compress_ratio=2, compress_layers=layers))


@pytest.mark.parametrize("kind", list(KIND_CLASSES))
def test_pairs_beyond_the_models_positions_are_refused(kind: str, loaded: dict[str, DecoderModel]) -> None:
    with pytest.raises(ValueError, match=r"max_length=8192 \(passage tokens\).*8192 positions"):
        loaded[kind].encode([("q", "p")], ScoringOptions(max_length=8192))


@pytest.mark.parametrize("kind", ["v2-minicpm-layerwise", "v2.5-gemma2-lightweight"])
def test_custom_code_kinds_need_trust_remote_code(kind: str, decoder_dirs: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match=r"custom model code.*pass trust_remote_code=True"):
        load(kind, decoder_dirs[kind], trust_remote_code=False)


def test_v2_gemma_loads_without_trust_remote_code(
    decoder_dirs: dict[str, Path], loaded: dict[str, DecoderModel]
) -> None:
    model = load("v2-gemma", decoder_dirs["v2-gemma"], trust_remote_code=False)
    pairs = all_pairs()[:8]
    assert score(model, pairs, ScoringOptions()) == score(loaded["v2-gemma"], pairs, ScoringOptions())
    assert not model.padding_free
    assert model.device == CPU


def test_a_folder_of_another_architecture_is_refused(decoder_dirs: dict[str, Path], model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"LayerWiseMiniCPMForCausalLM.*not a v2-gemma reranker"):
        load("v2-gemma", decoder_dirs["v2-minicpm-layerwise"])
    with pytest.raises(ModelLoadError, match=r"XLMRobertaForSequenceClassification.*not a v2.5-gemma2"):
        load("v2.5-gemma2-lightweight", model_dir)


def test_missing_files_are_a_load_error_with_the_cause(decoder_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such folder"):
        load("v2-gemma", tmp_path / "absent")
    broken = tmp_path / "gemma"
    shutil.copytree(decoder_dirs["v2-gemma"], broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as info:
        load("v2-gemma", broken)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("kind", list(KIND_CLASSES))
def test_int8_is_refused_by_name(kind: str, decoder_dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=f"dtype='int8'.*the {kind} reranker runs in"):
        load(kind, decoder_dirs[kind], dtype="int8")


def test_lightweight_rows_are_their_ids_with_the_compression_lengths(loaded: dict[str, DecoderModel]) -> None:
    pairs = all_pairs()[:6]
    rows = loaded["v2.5-gemma2-lightweight"].encode(pairs, ScoringOptions()).rows
    assert all(isinstance(row, LightweightRow) for row in rows)
    # The backend counts a row's tokens with len() and shows its ids with list(): both are the ids'.
    same_ids = loaded["v2-minicpm-layerwise"].encode(pairs, ScoringOptions()).rows  # same layout and <bos>
    assert [list(row) for row in rows] != [list(row) for row in same_ids]  # the prompts differ
    for row in rows:
        assert len(row) == len(row.ids) > row.query_length + row.prompt_length
        assert row.ids[row.query_length - 1] == row.ids[-row.prompt_length]  # both "\n"
