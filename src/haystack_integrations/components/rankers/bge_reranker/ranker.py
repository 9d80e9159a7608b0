"""``BGERanker``: a Haystack ranker component on the bge_rerank_integrations scoring core.

The component only turns documents into text, asks the core for scores and rebuilds the documents in
score order; tokenization, batching, devices and the sigmoid all live in the core. Components built
with the same settings share one loaded model per process.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import math
import os
import textwrap
from collections.abc import Sequence
from typing import Any, Literal

try:
    from haystack import Document, component, default_from_dict, default_to_dict
    from haystack.core.errors import SerializationError
    from haystack.utils import ComponentDevice, Secret
    from haystack.utils.auth import SecretType
except ImportError as exc:
    raise ImportError(
        'BGERanker needs Haystack; install it with: pip install "bge-rerank-integrations[haystack]"'
    ) from exc

from bge_rerank_integrations.adapter_support import (
    MODEL_SETTINGS,
    RerankerHold,
    adapter_config,
    adapter_reranker,
    check_top,
    model_settings,
    text_with_meta,
)
from bge_rerank_integrations.config import DEFAULT_MODEL, BackendName, LongPassages, RerankerConfig
from bge_rerank_integrations.reranker import Reranker, RerankResult

__all__ = ["BGERanker"]


_DEFAULT_TOKEN = Secret.from_env_var(["HF_API_TOKEN", "HF_TOKEN"], strict=False)
"""Haystack's usual token default: the first of these variables that is set (a frozen, shareable value)."""

_PARAMETERS = tuple("api_key" if name == "api_key_env" else name for name in MODEL_SETTINGS)
"""The init parameters that are core model settings: the core's, with the API key as a ``Secret``."""

_HF_KWARGS = ("model_kwargs", "tokenizer_kwargs", "config_kwargs")
"""sentence-transformers ranker parameters taken only empty, so its saved pipelines load unchanged."""

_OWN = (
    "token",
    "top_k",
    "query_prefix",
    "query_suffix",
    "document_prefix",
    "document_suffix",
    "scale_score",
    "score_threshold",
    "meta_fields_to_embed",
    "embedding_separator",
)
"""The component's own init parameters (Haystack's ranker conventions), saved with the settings."""

_SAVED = (*_PARAMETERS, *_OWN, "batch_size", *_HF_KWARGS)
"""Every init parameter :meth:`BGERanker.to_dict` saves: all but ``reranker``."""

_OWN_DOCS = ("device", "backend", "api_key_env")
"""Core settings whose parameter differs from the core's (a ``ComponentDevice``, ``"torch"``, a
``Secret``): documented by hand; every other core setting's ``:param`` is the declaration's doc."""


@component
class BGERanker:
    """Rerank documents against a query with bge-reranker-v2-m3 (or any one-label cross-encoder).

    A drop-in for Haystack's cross-encoder rankers: same ``top_k``, ``scale_score``,
    ``score_threshold``, ``meta_fields_to_embed`` and prefix/suffix conventions, reference-exact
    scores from the shared core, and one model in memory however many rankers a process builds with
    the same settings. A pipeline saved with ``SentenceTransformersSimilarityRanker`` loads with this
    component by changing only its ``type:`` line (its ``backend: torch``, ``batch_size`` and empty
    ``*_kwargs`` are accepted as they are saved).

    The scored pair of each document is
    ``(query_prefix + query + query_suffix,
    document_prefix + embedding_separator.join([*meta values, content]) + document_suffix)``,
    the meta values being those of ``meta_fields_to_embed`` that are present and not ``None``.

    Usage example:

    ```python
    from haystack import Document
    from haystack_integrations.components.rankers.bge_reranker import BGERanker

    ranker = BGERanker(top_k=2)
    ranker.warm_up()  # optional: run() loads the model on first use
    docs = [Document(content="Paris is in France."), Document(content="Berlin is in Germany.")]
    result = ranker.run(query="Which city is in Germany?", documents=docs)
    print(result["documents"][0].content, result["documents"][0].score)
    ```

    The same component scores on a serving engine's ``/rerank`` (TEI, vLLM, Infinity or Cohere) with
    ``backend`` and ``base_url``, the API key read from an environment variable:

    ```python
    ranker = BGERanker(backend="tei", base_url="http://tei:8080", api_key=Secret.from_env_var("TEI_API_KEY"))
    ```
    """

    def __init__(
        self,
        *,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        device: ComponentDevice | str | None = None,
        token: Secret | None = _DEFAULT_TOKEN,
        top_k: int = 10,
        query_prefix: str = "",
        query_suffix: str = "",
        document_prefix: str = "",
        document_suffix: str = "",
        scale_score: bool = True,
        score_threshold: float | None = None,
        meta_fields_to_embed: Sequence[str] | None = None,
        embedding_separator: str = "\n",
        max_length: int | None = None,
        max_batch_tokens: int | None = None,
        dtype: str | None = None,
        query_max_length: int | None = None,
        long_passages: LongPassages | None = None,
        window_overlap: int | None = None,
        max_windows: int | None = None,
        prompt: str | None = None,
        cutoff_layers: int | Sequence[int] | None = None,
        compress_ratio: int | None = None,
        compress_layers: int | Sequence[int] | None = None,
        batch_wait_ms: float | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool | None = None,
        trust_remote_code: bool | None = None,
        backend: BackendName | Literal["torch"] | None = None,
        base_url: str | None = None,
        api_key: Secret | None = None,
        request_timeout: float | None = None,
        max_concurrent_requests: int | None = None,
        max_texts_per_request: int | None = None,
        verify_tls: bool | None = None,
        batch_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        reranker: Reranker | None = None,
    ) -> None:
        """Store the settings; nothing is loaded or contacted until :meth:`warm_up` or the first :meth:`run`.

        Model settings left ``None`` take the core's defaults (see
        :class:`~bge_rerank_integrations.RerankerConfig`) and stay ``None`` when saved. The
        descriptions of the core settings (``model``, ``max_length``, ``dtype``, ...) are generated
        from the core's declaration and follow the component's own parameters below.

        :param device: Device to run on, as a ``ComponentDevice`` or a string such as ``"cuda:0"``
            (saved as a ``ComponentDevice``); ``None`` lets the core pick cuda, then mps, then cpu (and
            stays ``None`` when saved, so a pipeline saved on a GPU box still loads on a CPU one).
        :param token: Hugging Face token for private models (see the note on tokens below).
        :param top_k: Most documents to return; must be >= 1.
        :param query_prefix: Put before the query in every scored pair (an instruction, say).
        :param query_suffix: Put after the query in every scored pair.
        :param document_prefix: Put before each document's text (its meta values and content).
        :param document_suffix: Put after each document's text.
        :param scale_score: ``True`` gives sigmoid scores in (0, 1); ``False`` the raw logits.
        :param score_threshold: Keep only documents scoring at least this (after ``scale_score``).
        :param meta_fields_to_embed: Meta fields whose values are put before the content, each
            joined with ``embedding_separator``; missing and ``None`` values are skipped.
        :param embedding_separator: Separator between the meta values and the content.
        :param backend: ``"local"`` (default: torch in this process; ``"torch"``, as the
            sentence-transformers ranker saves it, means the same), or a serving engine's
            ``/rerank``: ``"tei"``, ``"vllm"``, ``"infinity"`` or ``"cohere"``.
        :param api_key: The serving engine's API key, as ``Secret.from_env_var(...)``: the core reads
            the first of its variables that is set when it connects, so the key itself is never
            stored, shown or saved. A ``Secret.from_token`` is refused. ``None``: no key is sent.
        :param batch_size: Taken (an int >= 1) and saved so that a sentence-transformers ranker's
            pipeline loads unchanged; it changes nothing: the core cuts batches by token count
            (``max_batch_tokens``), not by document count.
        :param model_kwargs: Likewise taken only as ``None`` or ``{}``: use the settings above
            (``dtype``, ``revision``, ``trust_remote_code``, ...) instead.
        :param tokenizer_kwargs: Taken only as ``None`` or ``{}`` (see ``model_kwargs``).
        :param config_kwargs: Taken only as ``None`` or ``{}`` (see ``model_kwargs``).
        :param reranker: A ready core :class:`~bge_rerank_integrations.Reranker` to use instead of
            the model settings above. A component built this way cannot be saved (``to_dict`` raises).
        :raises ValueError: ``top_k`` < 1, a setting out of range, a device map or an unknown device
            string given as ``device``, a token ``Secret`` given as ``api_key``, a sentence-transformers
            option this component cannot honour, or model settings given together with ``reranker``.
        :raises TypeError: an argument of the wrong type.

        Note on tokens: ``token`` defaults to the ``HF_API_TOKEN`` or ``HF_TOKEN`` environment
        variable, read when the model is first needed; only env-var secrets can be saved.
        """
        check_top("top_k", top_k)
        _check_scale_score(scale_score)
        _check_threshold(score_threshold)
        if isinstance(meta_fields_to_embed, str):
            raise TypeError(
                f"meta_fields_to_embed must be a list of field names, got {meta_fields_to_embed!r}"
            )
        for name, value in (
            ("embedding_separator", embedding_separator),
            ("query_prefix", query_prefix),
            ("query_suffix", query_suffix),
            ("document_prefix", document_prefix),
            ("document_suffix", document_suffix),
        ):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        _check_api_key(api_key)
        _check_sentence_transformers_options(
            backend, batch_size, model_kwargs, tokenizer_kwargs, config_kwargs
        )

        self.model = os.fspath(model)
        self.device = _component_device(device)
        self.token = token
        self.top_k = top_k
        self.query_prefix = query_prefix
        self.query_suffix = query_suffix
        self.document_prefix = document_prefix
        self.document_suffix = document_suffix
        self.scale_score = scale_score
        self.score_threshold = score_threshold
        self.meta_fields_to_embed = list(meta_fields_to_embed) if meta_fields_to_embed is not None else None
        self.embedding_separator = embedding_separator
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens
        self.dtype = dtype
        self.query_max_length = query_max_length
        self.long_passages = long_passages
        self.window_overlap = window_overlap
        self.max_windows = max_windows
        self.prompt = prompt
        self.cutoff_layers = _plain(cutoff_layers)
        self.compress_ratio = compress_ratio
        self.compress_layers = _plain(compress_layers)
        self.batch_wait_ms = batch_wait_ms
        self.revision = revision
        self.cache_dir = cache_dir
        self.local_files_only = local_files_only
        self.trust_remote_code = trust_remote_code
        self.backend = backend
        self.base_url = base_url
        self.api_key = api_key
        self.request_timeout = request_timeout
        self.max_concurrent_requests = max_concurrent_requests
        self.max_texts_per_request = max_texts_per_request
        self.verify_tls = verify_tls
        self.batch_size = batch_size
        self.model_kwargs = model_kwargs
        self.tokenizer_kwargs = tokenizer_kwargs
        self.config_kwargs = config_kwargs
        self._hold = RerankerHold(reranker)
        if reranker is not None:
            if not isinstance(reranker, Reranker):
                raise TypeError(f"reranker must be a Reranker, got {type(reranker).__name__}")
            given = {name: getattr(self, name) for name in _PARAMETERS}
            if self.model in (DEFAULT_MODEL, reranker.config.model):
                given["model"] = None  # the default, or the reranker's own model, is no clash
            self.model = adapter_reranker(given, reranker).config.model
        else:
            RerankerConfig(**self._settings())  # fail now, naming the bad setting, not at warm-up

    def _settings(self) -> dict[str, Any]:
        """The core settings given (``None`` left out), the device as torch names it."""
        given = {name: getattr(self, name) for name in MODEL_SETTINGS if name != "api_key_env"}
        given["device"] = self.device.to_torch_str() if self.device is not None else None
        given["api_key_env"] = _api_key_env(self.api_key)
        if given["backend"] == "torch":
            given["backend"] = "local"  # the sentence-transformers ranker's name for the same thing
        return {name: value for name, value in given.items() if value is not None}

    @property
    def reranker(self) -> Reranker:
        """The core reranker this component scores with: the one given, else the shared one for its settings.

        Resolving it loads nothing; components with equal settings get the same instance.
        """
        return self._hold.get(self._core_config)

    def _core_config(self) -> RerankerConfig:
        token = self.token.resolve_value() if self.token is not None else None
        return adapter_config({**self._settings(), "token": token})

    def warm_up(self) -> None:
        """Load the model (shared with every component built with the same settings); idempotent."""
        self.reranker.load()

    async def warm_up_async(self) -> None:
        """Load the model in a worker thread, so the event loop keeps running; idempotent."""
        reranker = self.reranker
        if not reranker.is_loaded:
            await asyncio.to_thread(reranker.load)

    def close(self) -> None:
        """Let go of the shared model (``Pipeline.close()`` calls this); it unloads once nobody holds it.

        Other components and adapters sharing the model keep it; this one takes it again (loading it if
        needed) on its next ``warm_up`` or ``run``. A reranker passed in as ``reranker=`` is left alone.
        """
        self._hold.release()

    async def close_async(self) -> None:
        """:meth:`close` in a worker thread (``await Pipeline.close_async()`` calls this)."""
        await asyncio.to_thread(self.close)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles carry the settings: each finds its process's shared model on first use.

        A given ``reranker`` is copied by its own rules (an unshared one becomes an equivalent new one).
        """
        return {**self.__dict__, "_hold": copy.copy(self._hold)}

    def to_dict(self) -> dict[str, Any]:
        """Serialize the init parameters (device only if one was given; secrets as their env-var names).

        :raises SerializationError: the component was built with a ready ``reranker``.
        :raises ValueError: ``token`` is a plain token (``Secret.from_token``), which Haystack never saves.
        """
        if self._hold.given is not None:
            raise SerializationError(
                "BGERanker built with reranker=... cannot be saved: a Reranker object is not a setting a "
                "pipeline file can hold. Build it from settings instead, e.g. "
                f"BGERanker(model={self.model!r}, ...); rankers with equal settings still share one model."
            )
        return default_to_dict(self, **{name: getattr(self, name) for name in _SAVED})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BGERanker:
        """Rebuild a component from :meth:`to_dict` output (secrets and devices are restored too)."""
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        scale_score: bool | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """Rank ``documents`` by relevance to ``query``, best first; loads the model on first use.

        Documents sharing an id are collapsed to one (the one with the highest incoming score, as
        Haystack's rankers do). Returned documents are copies with ``score`` set to a plain float;
        the input documents are left untouched. An empty ``documents`` returns at once, loading nothing.

        :param query: The query to rank against; must be a non-empty string.
        :param documents: Documents to rank; a document without content is ranked on its meta fields alone.
        :param top_k: Overrides the init value when not ``None``.
        :param scale_score: Overrides the init value when not ``None`` (``False`` counts).
        :param score_threshold: Overrides the init value when not ``None`` (``0.0`` counts).
        :returns: ``{"documents": [...]}``, at most ``top_k`` documents sorted by score.
        :raises ValueError: empty query, or ``top_k`` < 1.
        :raises TypeError: the query is missing or not a string, or an override has the wrong type.
        """
        request = self._request(query, documents, top_k, scale_score, score_threshold)
        if not request.documents:
            return {"documents": []}
        self.warm_up()
        results = self.reranker.rank(
            request.query, request.texts, top_n=request.top_k, normalize=request.scale_score
        )
        return {"documents": request.rebuild(results)}

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        scale_score: bool | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """:meth:`run` for async pipelines: loading and scoring run in worker threads."""
        request = self._request(query, documents, top_k, scale_score, score_threshold)
        if not request.documents:
            return {"documents": []}
        await self.warm_up_async()
        results = await self.reranker.arank(
            request.query, request.texts, top_n=request.top_k, normalize=request.scale_score
        )
        return {"documents": request.rebuild(results)}

    def _request(
        self,
        query: object,
        documents: object,
        top_k: int | None,
        scale_score: bool | None,
        score_threshold: float | None,
    ) -> _Request:
        if not isinstance(query, str):
            raise TypeError(f"BGERanker.run needs the query as a str, got {type(query).__name__}")
        if not query.strip():
            raise ValueError("BGERanker.run needs a non-empty query, got an empty or blank string")
        if isinstance(documents, str | bytes) or not isinstance(documents, Sequence):
            raise TypeError(f"documents must be a list of Document, got {type(documents).__name__}")
        for i, doc in enumerate(documents):
            if not isinstance(doc, Document):
                raise TypeError(f"documents[{i}] must be a Document, got {type(doc).__name__}")
        check_top("top_k", top_k)
        _check_scale_score(scale_score, allow_none=True)
        _check_threshold(score_threshold)
        unique = _deduplicate(documents)
        texts = [
            self.document_prefix
            + text_with_meta(doc.content or "", doc.meta, self.meta_fields_to_embed, self.embedding_separator)
            + self.document_suffix
            for doc in unique
        ]
        return _Request(
            query=self.query_prefix + query + self.query_suffix,
            documents=unique,
            texts=texts,
            top_k=self.top_k if top_k is None else top_k,
            scale_score=self.scale_score if scale_score is None else scale_score,
            score_threshold=self.score_threshold if score_threshold is None else score_threshold,
        )


_PARAM_WRAP = textwrap.TextWrapper(
    width=104,
    initial_indent=" " * 8,
    subsequent_indent=" " * 12,
    break_on_hyphens=False,  # a hyphenated name (bge-reranker-v2-m3) stays whole
    break_long_words=False,
)


def _with_setting_docs(doc: str | None) -> str:
    """``doc`` with a ``:param`` line per core setting not documented by hand, from its declaration."""
    lines = []
    for setting in model_settings():
        if setting.name in _OWN_DOCS:
            continue
        text = setting.doc
        if setting.default is not None and setting.name != "model":
            text += f" ``None``: the core's default, ``{setting.default!r}``."
        lines.append(_PARAM_WRAP.fill(f":param {setting.name}: {text}") + "\n")
    head, marker, tail = (doc or "").partition("        :param batch_size:")
    return head + "".join(lines) + marker + tail


BGERanker.__init__.__doc__ = _with_setting_docs(BGERanker.__init__.__doc__)


@dataclasses.dataclass(frozen=True)
class _Request:
    """One run's validated inputs: the scored query, the unique documents, their texts and the overrides."""

    query: str
    documents: list[Document]
    texts: list[str]
    top_k: int
    scale_score: bool
    score_threshold: float | None

    def rebuild(self, results: list[RerankResult]) -> list[Document]:
        """Copies of the ranked documents with their scores, best first, above the threshold."""
        ranked = []
        for result in results:
            if self.score_threshold is not None and result.score < self.score_threshold:
                break  # results are sorted, so every later one is below the threshold too
            doc = self.documents[result.index]
            # A deep copy: nested meta values of the output must not be the caller's own objects.
            ranked.append(dataclasses.replace(doc, score=float(result.score), meta=copy.deepcopy(doc.meta)))
        return ranked


def _deduplicate(documents: Sequence[Document]) -> list[Document]:
    """One document per id, in first-seen order: the highest incoming score wins, the first on ties."""
    best: dict[str, Document] = {}
    for doc in documents:
        kept = best.get(doc.id)
        if kept is None or _incoming(doc) > _incoming(kept):
            best[doc.id] = doc
    return list(best.values())


def _incoming(doc: Document) -> float:
    return doc.score if doc.score is not None else -math.inf


def _component_device(device: object) -> ComponentDevice | None:
    """``device`` as a single ``ComponentDevice`` (a string such as ``"cuda:0"`` is parsed), or ``None``."""
    if device is None:
        return None
    if isinstance(device, str):
        try:
            device = ComponentDevice.from_str(device)
        except ValueError as exc:
            raise ValueError(
                f"device must name a device such as 'cpu', 'cuda', 'cuda:1' or 'mps', got {device!r}"
            ) from exc
    if not isinstance(device, ComponentDevice):
        raise TypeError(
            f"device must be a ComponentDevice, a device string such as 'cuda:0', or None, "
            f"got {type(device).__name__}"
        )
    if device.has_multiple_devices:
        raise ValueError("device must be a single device: BGERanker runs on one device, got a device map")
    return device


def _plain(value: object) -> Any:
    """A sequence of layers as a list, so it saves as plain JSON and YAML; anything else as given
    (the core's declaration checks it)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return value


def _check_sentence_transformers_options(backend: object, batch_size: object, *kwargs: object) -> None:
    """Refuse sentence-transformers options that would silently mean something else here."""
    if backend in ("onnx", "openvino"):
        raise ValueError(
            f"backend={backend!r} is a sentence-transformers backend; BGERanker runs the model with torch "
            "('local', or 'torch' as that ranker saves it) or on a serving engine ('tei', 'vllm', "
            "'infinity', 'cohere')"
        )
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an int or None, got {type(batch_size).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for name, value in zip(_HF_KWARGS, kwargs, strict=True):
        if value is not None and value != {}:
            raise ValueError(
                f"{name} is a sentence-transformers option BGERanker does not take, got {value!r}; "
                "use its own settings (dtype, revision, trust_remote_code, max_length, ...) instead"
            )


def _check_api_key(api_key: object) -> None:
    if api_key is None:
        return
    if not isinstance(api_key, Secret):
        raise TypeError(f"api_key must be a Secret or None, got {type(api_key).__name__}")
    if api_key.type is not SecretType.ENV_VAR:
        raise ValueError(
            "api_key must name environment variables, e.g. Secret.from_env_var('TEI_API_KEY'): the core "
            "reads the key from the environment, so it is never stored or saved; got a token Secret"
        )


def _api_key_env(api_key: Secret | None) -> str | None:
    """The variable the core reads the key from: the first of the Secret's that is set, as Haystack does.

    When none is set, a strict Secret still names its first variable, so the core's error at connect
    time names it; a lenient one gives ``None`` (no key is sent).
    """
    if api_key is None:
        return None
    data = api_key.to_dict()
    names: list[str] = data["env_vars"]
    for name in names:
        if os.environ.get(name) is not None:
            return name
    return names[0] if data["strict"] else None


def _check_scale_score(value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, bool):
        raise TypeError(f"scale_score must be a bool, got {type(value).__name__}")


def _check_threshold(value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"score_threshold must be a number or None, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError("score_threshold must be a number, got nan")
