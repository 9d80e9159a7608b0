"""Rerank a LangChain retriever's results with bge-reranker-v2-m3, offline (no API key, fake embeddings).

The vector store retrieves with deterministic fake embeddings (so its order means nothing); the
``BGERerankCompressor`` in a ``ContextualCompressionRetriever`` reorders the hits by relevance.

Run:
    python examples/langchain_example.py                      # BAAI/bge-reranker-v2-m3 from the Hub
    python examples/langchain_example.py --model ./my-folder  # any local cross-encoder folder
"""

from __future__ import annotations

import argparse

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore

from bge_rerank_integrations import DEFAULT_MODEL
from bge_rerank_integrations.langchain import BGERerankCompressor

TEXTS = [
    "The giant panda is a bear native to south central China.",
    "Pandas is a Python library for data analysis.",
    "Red pandas are small mammals of the eastern Himalayas.",
    "Bamboo makes up almost all of a giant panda's diet.",
    "The Eiffel Tower is in Paris.",
    "Le panda géant vit dans les forêts de bambous du Sichuan.",
]


def main() -> None:
    """Build the retriever, ask one question and print the reranked documents with their scores."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="model id or local folder (default: %(default)s)"
    )
    parser.add_argument("--query", default="What do giant pandas eat?")
    parser.add_argument("--top-n", type=int, default=3)
    args = parser.parse_args()

    store = InMemoryVectorStore.from_texts(
        TEXTS,
        DeterministicFakeEmbedding(size=16),
        metadatas=[{"source": f"doc-{i}"} for i in range(len(TEXTS))],
        ids=[f"doc-{i}" for i in range(len(TEXTS))],
    )
    retriever = ContextualCompressionRetriever(
        base_compressor=BGERerankCompressor(model=args.model, top_n=args.top_n),
        base_retriever=store.as_retriever(search_kwargs={"k": len(TEXTS)}),
    )
    print(f"query: {args.query}")
    for rank, doc in enumerate(retriever.invoke(args.query), start=1):
        print(f"{rank}. [{doc.id}] {doc.metadata['relevance_score']:.4f}  {doc.page_content}")


if __name__ == "__main__":
    main()
