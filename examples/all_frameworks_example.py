"""One loaded bge-reranker-v2-m3 serving LlamaIndex, LangChain and Haystack in the same process.

Each adapter is built from the same model settings, so all three resolve to the same shared
``Reranker``: the weights load once (on first use) and every framework sees the same scores.

Run:
    python examples/all_frameworks_example.py                      # BAAI/bge-reranker-v2-m3
    python examples/all_frameworks_example.py --model ./my-folder  # any local cross-encoder folder
"""

from __future__ import annotations

import argparse

from haystack import Document as HaystackDocument
from langchain_core.documents import Document as LangChainDocument
from llama_index.core.schema import NodeWithScore, TextNode

from bge_rerank_integrations import DEFAULT_MODEL
from bge_rerank_integrations.haystack import BGERanker
from bge_rerank_integrations.langchain import BGERerankCompressor
from bge_rerank_integrations.llamaindex import BGERerank

TEXTS = [
    "The giant panda is a bear native to south central China.",
    "Pandas is a Python library for data analysis.",
    "Bamboo makes up almost all of a giant panda's diet.",
    "The Eiffel Tower is in Paris.",
    "Le panda géant vit dans les forêts de bambous du Sichuan.",
]


def main() -> None:
    """Rerank the same passages through all three frameworks and print each one's top hits."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="model id or local folder (default: %(default)s)"
    )
    parser.add_argument("--query", default="What do giant pandas eat?")
    parser.add_argument("--top-n", type=int, default=3, help="passages each framework keeps")
    args = parser.parse_args()
    ids = [f"doc-{i}" for i in range(len(TEXTS))]

    llama = BGERerank(model=args.model, top_n=args.top_n)
    nodes = [NodeWithScore(node=TextNode(id_=i, text=t)) for i, t in zip(ids, TEXTS, strict=True)]
    llama_hits = [(n.node.node_id, n.score) for n in llama.postprocess_nodes(nodes, query_str=args.query)]

    chain = BGERerankCompressor(model=args.model, top_n=args.top_n)
    docs = [LangChainDocument(id=i, page_content=t) for i, t in zip(ids, TEXTS, strict=True)]
    chain_hits = [(d.id, d.metadata["relevance_score"]) for d in chain.compress_documents(docs, args.query)]

    ranker = BGERanker(model=args.model, top_k=args.top_n)
    ranker.warm_up()
    hay_docs = [HaystackDocument(id=i, content=t) for i, t in zip(ids, TEXTS, strict=True)]
    hay_hits = [(d.id, d.score) for d in ranker.run(query=args.query, documents=hay_docs)["documents"]]

    shared = llama.reranker is chain.reranker is ranker.reranker
    print(f"query: {args.query}")
    print(f"one shared model for all three: {shared}")
    for name, hits in (("llamaindex", llama_hits), ("langchain", chain_hits), ("haystack", hay_hits)):
        print(f"{name:>10}: " + "  ".join(f"{doc_id}={score:.4f}" for doc_id, score in hits))


if __name__ == "__main__":
    main()
