"""Rerank BM25 results with bge-reranker-v2-m3 in a Haystack pipeline, offline (no API key).

``InMemoryBM25Retriever`` finds candidates by keywords; ``BGERanker`` reorders them by relevance.
The pipeline is then saved to YAML and loaded back, as a deployment would, and run again.
Set ``HAYSTACK_TELEMETRY_ENABLED=False`` to keep Haystack from sending usage statistics.

Run:
    python examples/haystack_example.py                      # BAAI/bge-reranker-v2-m3 from the Hub
    python examples/haystack_example.py --model ./my-folder  # any local cross-encoder folder
"""

from __future__ import annotations

import argparse

from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore

from bge_rerank_integrations import DEFAULT_MODEL
from haystack_integrations.components.rankers.bge_reranker import BGERanker

TEXTS = [
    ("The giant panda is a bear native to south central China.", "Giant panda"),
    ("Pandas is a Python library for data analysis.", "pandas (software)"),
    ("Red pandas are small mammals of the eastern Himalayas.", "Red panda"),
    ("Bamboo makes up almost all of a giant panda's diet.", "Giant panda diet"),
    ("The Eiffel Tower is in Paris.", "Eiffel Tower"),
    ("Le panda géant vit dans les forêts de bambous du Sichuan.", "Panda géant"),
]


def build_pipeline(model: str, top_k: int) -> Pipeline:
    """A BM25 retriever over :data:`TEXTS` feeding a :class:`BGERanker` that also reads each title."""
    store = InMemoryDocumentStore()
    store.write_documents([Document(content=text, meta={"title": title}) for text, title in TEXTS])
    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=len(TEXTS)))
    pipeline.add_component("ranker", BGERanker(model=model, top_k=top_k, meta_fields_to_embed=["title"]))
    pipeline.connect("retriever.documents", "ranker.documents")
    return pipeline


def main() -> None:
    """Build the pipeline, ask one question, print the reranked documents, then reload it from YAML."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="model id or local folder (default: %(default)s)"
    )
    parser.add_argument("--query", default="What do giant pandas eat?")
    parser.add_argument("--top-n", type=int, default=3, help="documents to keep (the ranker's top_k)")
    args = parser.parse_args()

    pipeline = build_pipeline(args.model, args.top_n)
    inputs = {"retriever": {"query": args.query}, "ranker": {"query": args.query}}
    ranked = pipeline.run(inputs)["ranker"]["documents"]
    print(f"query: {args.query}")
    for rank, doc in enumerate(ranked, start=1):
        print(f"{rank}. [{doc.meta['title']}] {doc.score:.4f}  {doc.content}")

    # A saved pipeline names the ranker by its haystack_integrations path, which Haystack loads by
    # default. In this process the reloaded ranker shares the loaded model (same settings), and the
    # reloaded in-memory store sees the same documents (it is keyed by its saved index name).
    reloaded = Pipeline.loads(pipeline.dumps())
    again = reloaded.run(inputs)["ranker"]["documents"]
    print(f"reloaded from YAML: same ranking = {[d.id for d in again] == [d.id for d in ranked]}")


if __name__ == "__main__":
    main()
