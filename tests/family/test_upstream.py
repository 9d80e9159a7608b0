"""Why the layer-wise kinds run on transformers' own modules: their shipped code breaks under transformers 5.

If one of these starts to pass, upstream has changed: revisit ``bge_rerank_integrations.llm_layerwise``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from .reference import REFERENCE_WARNINGS

pytestmark = REFERENCE_WARNINGS


def test_minicpm_remote_code_cannot_build_or_leaves_its_rotary_tables_uninitialised(
    decoder_dirs: dict[str, Path],
) -> None:
    folder = decoder_dirs["v2-minicpm-layerwise"]
    with pytest.raises(KeyError, match="type"):  # config.rope_scaling is now the standardized rope_parameters
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    config.rope_parameters = None  # past that, from_pretrained builds on the meta device ...
    model = AutoModelForCausalLM.from_pretrained(folder, config=config, trust_remote_code=True)
    rotary = model.model.layers[0].self_attn.rotary_emb
    expected = 1.0 / (rotary.base ** (torch.arange(0, rotary.dim, 2).float() / rotary.dim))
    assert not torch.equal(rotary.inv_freq, expected)  # ... and the non-persistent tables stay garbage


def test_lightweight_remote_code_calls_gemma2_layers_the_transformers_4_way(
    decoder_dirs: dict[str, Path],
) -> None:
    model = AutoModelForCausalLM.from_pretrained(
        decoder_dirs["v2.5-gemma2-lightweight"], trust_remote_code=True
    )
    ids = torch.tensor([[2, 300, 301, 302]])
    with pytest.raises(TypeError, match="cannot unpack"):  # no position_embeddings passed to the layer
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
