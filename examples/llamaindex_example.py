"""Rerank a LlamaIndex query engine's nodes with bge-reranker-v2-m3, offline (no API key, mock LLM).

A ``VectorStoreIndex`` retrieves with ``MockEmbedding`` (constant vectors, so its order means nothing);
``BGERerank`` in the query engine's ``node_postprocessors`` reorders the candidates by relevance and
keeps the best ``--top-n``. ``MockLLM`` stands in for the answer-writing model.

Run:
    python examples/llamaindex_example.py                      # BAAI/bge-reranker-v2-m3 from the Hub
    python examples/llamaindex_example.py --model ./my-folder  # any local cross-encoder folder
"""

from __future__ import annotations

import argparse

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM

from bge_rerank_integrations import DEFAULT_MODEL
from bge_rerank_integrations.llamaindex import BGERerank

TEXTS = [
    "The giant panda is a bear native to south central China.",
    "Pandas is a Python library for data analysis.",
    "Red pandas are small mammals of the eastern Himalayas.",
    "Bamboo makes up almost all of a giant panda's diet.",
    "The Eiffel Tower is in Paris.",
    "Le panda géant vit dans les forêts de bambous du Sichuan.",
]


def main() -> None:
    """Index the texts, ask one question and print the reranked nodes with their scores."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="model id or local folder (default: %(default)s)"
    )
    parser.add_argument("--query", default="What do giant pandas eat?")
    parser.add_argument("--top-n", type=int, default=3)
    args = parser.parse_args()

    documents = [
        Document(text=text, id_=f"doc-{i}", metadata={"source": f"doc-{i}.txt"})
        for i, text in enumerate(TEXTS)
    ]
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=len(TEXTS),  # retrieve wide, let the cross-encoder pick
        node_postprocessors=[BGERerank(model=args.model, top_n=args.top_n, keep_retrieval_score=True)],
    )
    response = engine.query(args.query)
    print(f"query: {args.query}")
    for rank, hit in enumerate(response.source_nodes, start=1):
        source = hit.node.metadata["source"]
        print(f"{rank}. [{source}] {hit.score:.4f}  {hit.node.get_content()}")


if __name__ == "__main__":
    main()
