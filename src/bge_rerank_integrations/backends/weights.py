"""One loaded model per process per weights: local backends that differ only in how they score pairs
(lengths, windows, batch budget) share the weights, the tokenizer and one device lock.

The registry holds its entries weakly: a :class:`LoadedWeights` lives while some backend refers to it,
and its memory is freed once the last one closes or is dropped, as if it had been loaded alone.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bge_rerank_integrations.kinds.base import LoadedModel

__all__ = ["LoadedWeights", "WeightsKey", "shared_weights"]


@dataclass(frozen=True, kw_only=True)
class WeightsKey:
    """What decides the weights in memory: where they come from, the device and dtype, both resolved.

    ``device`` names one device with its index (``"cpu"``, ``"cuda:0"``) and ``dtype`` the dtype the
    model loads in (never ``"auto"``), so settings that end up loading the same thing compare equal.
    """

    model: str
    revision: str | None
    token: str | None = field(repr=False)
    cache_dir: str | None
    local_files_only: bool
    trust_remote_code: bool
    device: str
    dtype: str


@dataclass(eq=False, kw_only=True)
class LoadedWeights:
    """A model ready to score on its device, shared by every backend of its :class:`WeightsKey`."""

    model: LoadedModel
    """The model kind's loaded model; each backend runs its own view of it (``ModelView.view``)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held for each forward pass, so that passes on these weights run one at a time."""


_registry: weakref.WeakValueDictionary[WeightsKey, LoadedWeights] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()
_loading: dict[WeightsKey, tuple[threading.Lock, list[int]]] = {}
"""Per key being loaded: the lock its loaders queue on, and how many wait (the entry goes with the last)."""


def shared_weights(key: WeightsKey, load: Callable[[], LoadedWeights]) -> LoadedWeights:
    """The weights of ``key`` already in memory, else ``load()``'s, registered for the next caller.

    Concurrent callers with one key load once; callers with different keys load side by side. A
    failed load registers nothing (the next caller tries again). Keep the returned object referenced
    for as long as it is used: the registry alone does not keep it alive.
    """
    with _registry_lock:
        found = _registry.get(key)
        if found is not None:
            return found
        key_lock, waiting = _loading.setdefault(key, (threading.Lock(), [0]))
        waiting[0] += 1
    try:
        with key_lock:
            with _registry_lock:
                found = _registry.get(key)
            if found is not None:
                return found
            loaded = load()
            with _registry_lock:
                _registry[key] = loaded
            return loaded
    finally:
        with _registry_lock:
            waiting[0] -= 1
            if not waiting[0]:
                del _loading[key]
