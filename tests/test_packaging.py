"""The wheel ships what the project declares: the Apache-2.0 LICENSE, both import packages, the script."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The project's wheel, built offline with the installed hatchling (the dev extra has it)."""
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run(
        [*command, "--quiet", "-w", str(out), str(ROOT)], check=True, capture_output=True, timeout=300
    )
    (path,) = out.glob("bge_rerank_integrations-*.whl")
    return zipfile.ZipFile(path)


def test_the_license_file_is_apache_2_and_ships_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    (shipped,) = (name for name in wheel.namelist() if name.endswith(".dist-info/licenses/LICENSE"))
    assert wheel.read(shipped).decode("utf-8") == text
    (metadata,) = (name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
    fields = wheel.read(metadata).decode("utf-8").splitlines()
    assert "License-Expression: Apache-2.0" in fields
    assert "License-File: LICENSE" in fields


def test_the_wheel_holds_both_packages_and_the_script_but_no_benchmarks(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    assert "bge_rerank_integrations/cli.py" in names
    assert "bge_rerank_integrations/py.typed" in names
    assert "haystack_integrations/components/rankers/bge_reranker/ranker.py" in names
    assert not any(name.startswith(("benchmarks/", "tests/", "examples/")) for name in names)
    (entry_points,) = (name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "bge-rerank = bge_rerank_integrations.cli:main" in wheel.read(entry_points).decode("utf-8")
