"""Every ```python block of the README runs as written, so the README cannot drift from the code.

The blocks name the real model (``BAAI/bge-reranker-v2-m3``, or the adapters' default, which is
the same). Here the tiny test model stands in for it: it is put in a private Hugging Face cache
under that id, the hub is kept offline, and every HTTP request is routed to a proxy on 127.0.0.1
that refuses it (and counts it). Each block runs alone, in a fresh process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bge_rerank_integrations import DEFAULT_MODEL
from tests.processes import fake_hub, online_env

README = Path(__file__).parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _blocks(language: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of each fenced block of ``language`` in the README."""
    text = README.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(2))
        for match in _FENCE.finditer(text)
        if match.group(1) == language
    ]


PYTHON_BLOCKS = _blocks("python")


@pytest.fixture(scope="module")
def hub_cache(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face home whose hub cache holds the test model under the default model's id."""
    home = tmp_path_factory.mktemp("hf-home")
    repo = home / "hub" / f"models--{DEFAULT_MODEL.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return home


def test_the_readme_has_a_python_block_for_each_part() -> None:
    # the core, a serving engine, LlamaIndex, LangChain, Haystack: an extraction that found
    # nothing would let every block drift
    assert len(PYTHON_BLOCKS) >= 5


@pytest.mark.slow
@pytest.mark.parametrize(("line", "code"), PYTHON_BLOCKS, ids=[f"README.md:{n}" for n, _ in PYTHON_BLOCKS])
def test_a_python_block_runs_as_written(line: int, code: str, hub_cache: Path, tmp_path: Path) -> None:
    script = tmp_path / f"readme_line_{line}.py"
    script.write_text(code, encoding="utf-8")
    with fake_hub(403) as proxy:
        env = online_env(proxy, hub_cache)
        env["HF_HUB_OFFLINE"] = "1"
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 0, f"README.md line {line}:\n{result.stderr[-3000:]}"
    assert proxy.requests == []  # nothing tried to reach the network


def test_the_offline_one_liner_runs_as_written(model_dir: Path, tmp_path: Path) -> None:
    (command,) = (
        line for _, code in _blocks("bash") for line in code.splitlines() if "make-test-model" in line
    )
    scripts = Path(sys.executable).parent  # where pip put the `bge-rerank` script
    with fake_hub(403) as proxy:
        env = online_env(proxy, tmp_path / "hf-home")
        env["PATH"] = os.pathsep.join([str(scripts), env.get("PATH", "")])
        result = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tiny" / "config.json").is_file()
    ranked = result.stdout.splitlines()[1:]  # after the folder make-test-model prints
    assert len(ranked) == 2
    assert proxy.requests == []
