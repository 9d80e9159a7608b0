"""All three adapters in one process: one shared model, the same ranking and scores everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bge_rerank_integrations import Reranker

EXAMPLE = Path(__file__).parents[2] / "examples" / "all_frameworks_example.py"


def test_example_shares_one_model_and_agrees_across_frameworks(model_dir: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HAYSTACK_TELEMETRY_ENABLED": "False"}
    query = "What do giant pandas eat?"
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "--model", str(model_dir), "--query", query, "--top-n", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    ).stdout
    assert "one shared model for all three: True" in out

    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        from all_frameworks_example import TEXTS
    finally:
        sys.path.pop(0)
    expected = Reranker(model_dir).rank(query, TEXTS, top_n=3, normalize=True)
    want = "  ".join(f"doc-{r.index}={r.score:.4f}" for r in expected)
    lines = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in out.splitlines()[2:]}
    assert lines == {"llamaindex": want, "langchain": want, "haystack": want}
