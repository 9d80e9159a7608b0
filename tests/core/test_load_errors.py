"""Loading fails early and says why: impossible devices, mistyped folders, and what the hub answered.

Tests that let the child process use the hub point every request at a stand-in on 127.0.0.1
(``tests.processes.fake_hub``, as the hub or as the proxy in front of it): nothing leaves the machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bge_rerank_integrations import ModelLoadError, Reranker
from bge_rerank_integrations.backends.local import available_devices
from tests.processes import fake_hub, online_env

# A reply of the hub for a repository that does not exist (or is private to someone else).
NO_SUCH_REPO = {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}


def _impossible_devices() -> list[str]:
    """Devices this machine cannot have, whatever it is: one GPU past the count, and the absent kinds."""
    devices = [f"cuda:{torch.cuda.device_count()}", "meta", "banana", "cuda:x"]
    if torch.cuda.device_count() < 8:
        devices.append("cuda:7")
    if not torch.cuda.is_available():
        devices.append("cuda")
    if not torch.backends.mps.is_available():
        devices.append("mps")
    return devices


@pytest.mark.parametrize("device", _impossible_devices())
def test_an_impossible_device_is_a_value_error_at_load_naming_what_is_available(
    model_dir: Path, device: str
) -> None:
    reranker = Reranker(model_dir, device=device)  # construction stays lazy and contacts nothing
    with pytest.raises(ValueError, match="available") as info:
        reranker.load()
    message = str(info.value)
    assert repr(device) in message
    assert message.endswith(f"available: {', '.join(available_devices())}")
    assert not reranker.is_loaded


def test_a_device_list_checks_each_replica(model_dir: Path) -> None:
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError, match=repr(missing)):
        Reranker(model_dir, device=["cpu", missing]).load()


def test_every_available_device_loads(model_dir: Path) -> None:
    for device in available_devices():
        assert Reranker(model_dir, device=device).load().is_loaded


def _load_in_child(models: list[str], env: dict[str, str], cwd: Path) -> list[dict[str, str | None]]:
    """Load each of ``models`` in one fresh process (its hub settings come from ``env``): what each raised."""
    code = (
        "import json, sys\n"
        "from bge_rerank_integrations import Reranker\n"
        "for model in sys.argv[1:]:\n"
        "    try:\n"
        "        Reranker(model).load()\n"
        "        print(json.dumps({'error': None}))\n"
        "    except Exception as exc:\n"
        "        cause = exc.__cause__\n"
        "        print(json.dumps({'error': type(exc).__name__, 'message': str(exc),\n"
        "                          'cause': type(cause).__name__ if cause else None}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *models], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    outcomes: list[dict[str, str | None]] = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(outcomes) == len(models), result.stdout
    return outcomes


def test_a_mistyped_folder_is_named_at_once_without_asking_the_hub(model_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(model_dir, tmp_path / "tiny")
    shutil.copytree(model_dir, tmp_path / "models" / "reranker-small")
    typed = {"tiyn": "'./tiny'", "./tiyn": "'./tiny'", "Tiyn": "'./tiny'", "tin": "'./tiny'"}
    typed["models/reranker-smal"] = "'models/reranker-small'"
    with fake_hub(404, NO_SUCH_REPO) as hub:
        outcomes = _load_in_child(list(typed), online_env(hub, tmp_path / "cache"), cwd=tmp_path)
    for (name, folder), outcome in zip(typed.items(), outcomes, strict=True):
        assert outcome["error"] == "ModelLoadError", name
        assert "no such folder" in str(outcome["message"]), name
        assert f"Did you mean {folder}?" in str(outcome["message"]), name
    assert hub.requests == []  # said at once: the hub was never asked


def test_a_name_that_cannot_be_a_hub_id_is_refused_without_asking_the_hub(tmp_path: Path) -> None:
    names = ["my model", "org/name/extra", "x--y", "-x", "tiny.git", "a" * 97, "./here", "/nowhere/x"]
    with fake_hub(404, NO_SUCH_REPO) as hub:
        outcomes = _load_in_child(names, online_env(hub, tmp_path / "cache"), cwd=tmp_path)
    for name, outcome in zip(names, outcomes, strict=True):
        assert outcome["error"] == "ModelLoadError", name
        expected = f"could not load the reranker model {name!r}: no such folder"
        assert str(outcome["message"]).startswith(expected)
    assert "is not a valid hub id" in str(outcomes[0]["message"])
    assert hub.requests == []


def test_a_file_is_not_a_model_folder(model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="it is a file; pass the folder"):
        Reranker(model_dir / "config.json").load()


def test_a_hub_id_unknown_to_the_hub_says_so_and_keeps_the_hubs_error(tmp_path: Path) -> None:
    with fake_hub(404, NO_SUCH_REPO) as hub:
        env = online_env(hub, tmp_path / "cache")
        (outcome,) = _load_in_child(["some-org/no-such-reranker"], env, tmp_path)
    message = str(outcome["message"])
    assert hub.requests  # this one is a hub id: the hub was asked
    assert "the Hugging Face hub has no model of that name" in message
    assert "Repository Not Found" in message  # the hub's own words
    assert "could not be reached" not in message
    assert "HF_HUB_OFFLINE" not in message  # no hint about a network that worked
    assert outcome["cause"] is not None  # the hub's error stays chained for the traceback


def test_an_unreachable_hub_says_so_and_suggests_offline_mode(tmp_path: Path) -> None:
    # The hub's real address, behind a proxy (on 127.0.0.1) that refuses to connect to it.
    with fake_hub(403) as proxy:
        env = online_env(proxy, tmp_path / "cache", endpoint="https://huggingface.co")
        (outcome,) = _load_in_child(["some-org/some-reranker"], env, tmp_path)
    message = str(outcome["message"])
    assert proxy.requests == ["CONNECT huggingface.co:443"] * len(proxy.requests)
    assert "the Hugging Face hub could not be reached" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "--local-files-only" in message
    assert "hf download some-org/some-reranker --local-dir ./some-reranker" in message
    assert outcome["cause"] is not None


def test_offline_mode_says_the_model_is_not_cached(tmp_path: Path) -> None:
    # This process runs with HF_HUB_OFFLINE=1 (tests/conftest.py); local_files_only is the same choice.
    for offline in ({}, {"local_files_only": True}):
        with pytest.raises(ModelLoadError) as info:
            Reranker("some-org/some-reranker", cache_dir=str(tmp_path), **offline).load()  # type: ignore[arg-type]
        message = str(info.value)
        assert "it is not in the local Hugging Face cache" in message
        assert "could not be reached" not in message
        assert info.value.__cause__ is not None  # the hub library's own error, chained


def test_a_broken_local_folder_gives_its_reason_and_no_hub_advice(model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(model_dir, folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as info:
        Reranker(folder).load()
    message = str(info.value)
    assert message.startswith(f"could not load the reranker model {str(folder)!r}: ")
    assert "hub" not in message.lower()
    assert info.value.__cause__ is not None
