"""Where a model comes from (a local folder or the Hugging Face hub) and what to say when it fails.

A name that can only be a folder (``./x``, ``a/b/c``, or not a valid hub id), or a hub-style name
that is not cached while a folder of a close name is here (``tiyn`` next to ``./tiny``), is
refused before the hub is contacted: otherwise ``huggingface_hub`` retries the network for about
25 seconds first. After a failed load, the message says whether the hub was unreachable, answered
that there is no such model, or was kept out by offline mode, and suggests only what fits.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from bge_rerank_integrations.errors import ModelLoadError

__all__ = ["check_model_name", "is_hub_id", "load_error_message"]

# huggingface_hub's rule for a repo id: "name" or "org/name", each part of letters, digits, "-", "_"
# and ".", not starting or ending with "-" or ".", no "--" or "..", at most 96 characters.
_HUB_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"(?:{_HUB_PART}/)?{_HUB_PART}")
_HUB_ID_MAX = 96
_SCAN_LIMIT = 2000  # folder entries looked at for close names (a huge folder costs nothing)


def check_model_name(model: str, *, cache_dir: str | None = None, revision: str | None = None) -> None:
    """Refuse at once a model name that cannot load, before anything contacts the hub.

    Raises:
        ModelLoadError: ``model`` names no folder and cannot be a hub id, or a close-named model
            folder is here and the hub id is not in the local cache; the message names the folder.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ModelLoadError(
            f"could not load the reranker model {model!r}: it is a file; pass the folder that holds "
            "the model's config.json"
        )
    close = _close_model_folders(path)
    suggestion = f" Did you mean {_or_list(close)}?" if close else ""
    if not is_hub_id(model):
        shape = (
            ""
            if _looks_like_path(model)
            else " and is not a valid hub id ('name' or 'org/name' of letters, digits, '-', '_' and '.')"
        )
        raise ModelLoadError(
            f"could not load the reranker model {model!r}: no such folder{shape}.{suggestion}"
        )
    if close and not _in_hub_cache(model, cache_dir=cache_dir, revision=revision):
        raise ModelLoadError(
            f"could not load the reranker model {model!r}: no such folder.{suggestion} A hub model is "
            f"not tried for a name this close to a local folder: write a folder with ./ in front, and "
            f"a hub model by its full id, 'org/name'."
        )


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hugging Face hub repo id (``name`` or ``org/name``)."""
    return (
        len(name) <= _HUB_ID_MAX
        and _HUB_ID.fullmatch(name) is not None
        and "--" not in name
        and ".." not in name
        and not name.endswith(".git")
    )


def load_error_message(model: str, exc: BaseException, *, offline: bool) -> str:
    """One readable paragraph about a failed load: what went wrong, and the options that fit it.

    ``offline`` says whether the hub was kept out on purpose (``local_files_only`` or
    ``HF_HUB_OFFLINE=1``).
    """
    head = f"could not load the reranker model {model!r}"
    if Path(model).expanduser().is_dir():  # the hub played no part: a broken or incomplete folder
        return f"{head}: {_first_line(exc)}"
    kind, cause = _hub_failure(exc)
    download = (
        f"`hf download {model} --local-dir ./{model.rsplit('/', 1)[-1]}` where the hub is reachable, "
        "then pass that folder as the model"
    )
    if kind == "gated":
        return (
            f"{head}: it is gated on the Hugging Face hub: accept its terms on the model's page and "
            f"pass a token (token=..., or `hf auth login`).\nThe hub said: {_first_line(cause)}"
        )
    if kind == "not found":
        return (
            f"{head}: the Hugging Face hub has no model of that name (or it is private: pass a "
            f"token); a local folder is written with ./ in front.\nThe hub said: {_first_line(cause)}"
        )
    if kind == "unreachable":
        return (
            f"{head}: the Hugging Face hub could not be reached. Download it once with {download}. "
            "If it is already in the local cache, set HF_HUB_OFFLINE=1 (or local_files_only=True; "
            "--local-files-only on the command line) to load it without waiting for the network.\n"
            f"Details: {_named(cause)}"
        )
    if kind == "not cached" and offline:
        return (
            f"{head}: it is not in the local Hugging Face cache, and offline mode (local_files_only, "
            f"or HF_HUB_OFFLINE=1) keeps the hub out. Download it once with {download}."
        )
    return f"{head}: {_first_line(cause)}"


def _hub_failure(exc: BaseException) -> tuple[str | None, BaseException]:
    """What the cause chain of a failed load shows, and the error that shows it.

    ``"gated"`` or ``"not found"`` (the hub answered), ``"unreachable"`` (a network error or a hub
    server error), ``"not cached"`` (the local cache was asked and had nothing), ``"hub error"``
    (another hub reply), else ``None`` with ``exc`` itself.
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    found: tuple[str | None, BaseException] = (None, exc)
    for error in _chain(exc):
        if isinstance(error, GatedRepoError):
            return "gated", error
        if isinstance(error, RepositoryNotFoundError):
            return "not found", error
        status = getattr(getattr(error, "response", None), "status_code", None)
        names = {cls.__name__ for cls in type(error).__mro__}
        network = isinstance(error, ConnectionError | TimeoutError | socket.gaierror) and not isinstance(
            error, OfflineModeIsEnabled
        )
        if network or names & {"TransportError", "TimeoutException"}:  # httpx's families, any build
            found = ("unreachable", error)  # keep walking: the deepest one says the most
        elif isinstance(error, HfHubHTTPError) and found[0] != "unreachable":
            found = ("unreachable" if isinstance(status, int) and status >= 500 else "hub error", error)
        elif isinstance(error, LocalEntryNotFoundError | OfflineModeIsEnabled) and found[0] is None:
            found = ("not cached", error)
    return found


def _first_line(exc: BaseException) -> str:
    """The gist of an error: its first line (two for the hub's terse ``404 Client Error.``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        return " ".join(lines[:2])
    return lines[0]


def _named(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model or os.path.isabs(model)


def _in_hub_cache(model: str, *, cache_dir: str | None, revision: str | None) -> bool:
    """Whether the hub id's config is in the local cache (read from disk only, no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model, "config.json", cache_dir=cache_dir, revision=revision)
    return isinstance(found, str)


def _close_model_folders(path: Path) -> list[str]:
    """Model folders (holding a config.json) next to ``path`` whose name is a typo away from it."""
    parent, name = path.parent, path.name.lower()
    if not name or not parent.is_dir():
        return []
    limit = min(3, max(1, len(name) // 6))
    close: list[str] = []
    try:
        with os.scandir(parent) as entries:
            for _, entry in zip(range(_SCAN_LIMIT), entries, strict=False):
                if (
                    entry.is_dir()
                    and _edit_distance(entry.name.lower(), name) <= limit
                    and Path(entry.path, "config.json").is_file()
                ):
                    close.append(entry.path)
    except OSError:
        return []
    return sorted(close)[:3]


def _edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) turning ``a`` into ``b``."""
    if abs(len(a) - len(b)) > 3:
        return 4
    before: list[int] | None = None
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, y in enumerate(b, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y))
            if before is not None and i > 1 and j > 1 and x == b[j - 2] and a[i - 2] == y:
                current[j] = min(current[j], before[j - 2] + 1)
        before, previous = previous, current
    return previous[-1]


def _or_list(items: list[str]) -> str:
    quoted = [repr(i) for i in items]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
