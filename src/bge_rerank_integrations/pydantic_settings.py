"""The core's model settings as frozen pydantic fields, for the pydantic-based adapters.

LlamaIndex's and LangChain's adapters are pydantic models; both inherit :class:`RerankerSettings`,
whose fields are generated from the core's declaration
(:func:`~bge_rerank_integrations.adapter_support.model_settings`: type, default, description), so
a setting added to :mod:`~bge_rerank_integrations.config` is a field of every adapter with nothing
restated here. Only those two adapters import this module: the core never imports pydantic (both
frameworks depend on pydantic v2, so it is present wherever this module is used).

Typing trade-off: the generated fields are invisible to static type checkers, which see
:class:`RerankerSettings` as a plain ``BaseModel`` whose unknown attributes read as ``Any``. So
``adapter.max_length`` type-checks (as ``Any``) and works at runtime, keyword arguments are checked
at runtime by the core's declaration (a clear ``ValueError``/``TypeError``), and
``adapter.reranker.config`` is the fully typed view of the same settings. Restating the fields for
the type checker would bring back the copies this module exists to remove.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model

from bge_rerank_integrations.adapter_support import (
    MODEL_SETTINGS,
    RerankerHold,
    adapter_config,
    model_settings,
)
from bge_rerank_integrations.config import RerankerConfig
from bge_rerank_integrations.reranker import Reranker

__all__ = ["RerankerSettings"]


def _fields_model() -> type[BaseModel]:
    """A pydantic model with one frozen, described field per declared model setting, in order."""
    fields: dict[str, Any] = {
        s.name: (s.annotation, Field(default=s.default, frozen=True, description=s.doc))
        for s in model_settings()
    }
    return create_model("RerankerSettingsFields", __module__=__name__, **fields)


if TYPE_CHECKING:
    _SettingsFields = BaseModel  # the generated fields are runtime-only (see the module docstring)
else:
    _SettingsFields = _fields_model()


class RerankerSettings(_SettingsFields):
    """Every core model setting (:data:`~bge_rerank_integrations.adapter_support.MODEL_SETTINGS`) as a
    frozen field, resolved on first use to one (process-wide shared) core reranker.

    Inherit it first, before the framework's base class. The fields (type, default and description
    generated from :mod:`~bge_rerank_integrations.config`) read back the core's checked settings
    (``dtype="fp16"`` as ``"float16"``, a device list as a tuple); per-call choices such as
    ``normalize`` and ``top_n`` belong to each adapter.

    The shared reranker is found on first use, and :meth:`close` lets go of it (see
    :class:`~bge_rerank_integrations.adapter_support.RerankerHold`). Copies (``copy``, ``model_copy``,
    ``deepcopy``, ``pickle``) carry the settings and find their process's shared reranker on first
    use; with a given ``reranker``, they hold a copy of it (the same one, for a shallow copy).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", use_attribute_docstrings=True)

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            """The generated setting fields, untyped for the type checker (see the module docstring)."""

    _hold: RerankerHold = PrivateAttr(default_factory=RerankerHold)

    def __init__(self, *, reranker: Reranker | None = None, **data: Any) -> None:
        """Check the settings and keep the ``reranker`` given, if any; loads nothing.

        Args:
            reranker: a core reranker to use instead of the shared one for the model settings.
            **data: the fields; a model setting that is absent or ``None`` takes the core's default.

        Raises:
            ValueError: a setting is out of range, or both ``reranker`` and model settings are given.
            TypeError: ``reranker`` is not a :class:`Reranker`, or a setting has the wrong type.
        """
        config = adapter_config({name: data.pop(name, None) for name in MODEL_SETTINGS}, reranker)
        super().__init__(**data, **{name: getattr(config, name) for name in MODEL_SETTINGS})
        self._hold = RerankerHold(reranker)

    @property
    def reranker(self) -> Reranker:
        """The core reranker doing the scoring, shared by equal settings (``.load()`` warms it up)."""
        return self._reranker

    @property
    def _reranker(self) -> Reranker:
        return self._hold.get(self._config)

    def _config(self) -> RerankerConfig:
        return RerankerConfig(**{name: getattr(self, name) for name in MODEL_SETTINGS})

    def close(self) -> None:
        """Let go of the shared reranker: its model unloads once no other adapter or caller holds it.

        The adapter stays usable: its next call finds the shared reranker again (loading the model if
        it was unloaded). A reranker passed in as ``reranker=`` is left alone: close it yourself.
        """
        self._hold.release()

    def __copy__(self) -> Self:
        copied = super().__copy__()
        copied._hold = copy.copy(self._hold)  # its own hold, or the same given reranker
        return copied

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)  # LlamaIndex's rebuilds through __init__, which drops the hold
        hold = (state.get("__pydantic_private__") or {}).get("_hold")
        if isinstance(hold, RerankerHold):
            self._hold = hold
