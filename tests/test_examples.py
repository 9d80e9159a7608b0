"""The examples speak one language: the same option name for the same thing in every script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import child_env

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_every_example_takes_the_same_options(example: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(example), "--help"], capture_output=True, text=True, env=child_env(), timeout=120
    )
    assert result.returncode == 0, result.stderr
    options = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", result.stdout)) - {"--help"}
    assert options == {"--model", "--query", "--top-n"}
