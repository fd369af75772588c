"""Retrieval-augmented generation with LangChain on the embedded demo pair, fully offline.

The documents are docstrings of Python standard-library modules (the text the demo pair was trained near);
a small TF-IDF retriever picks the relevant ones. The answer streams to stdout; each speculative step's
acceptance figures stream to stderr as they arrive.
"""

import importlib
import inspect
import math
import os
import re
import sys
from collections import Counter

from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnablePassthrough
from langchain_diffuspec import ChatDiffuSpec

MODULES = ["json", "csv", "pathlib", "argparse", "textwrap", "itertools", "functools", "shutil", "heapq", "bisect"]
MAX_TOKENS = int(os.environ.get("DIFFUSPEC_EXAMPLE_TOKENS", "96"))


def words(text: str) -> list[str]:
    return re.findall(r"[a-z_]{2,}", text.lower())


class TfidfRetriever(BaseRetriever):
    """Lexical retrieval: the k documents with the highest TF-IDF overlap with the query."""

    documents: list[Document]
    k: int = 2

    def _get_relevant_documents(self, query: str, *, run_manager=None) -> list[Document]:
        counts = [Counter(words(d.page_content)) for d in self.documents]
        df = Counter(w for c in counts for w in c)
        n = len(self.documents)

        def score(c: Counter) -> float:
            return sum(c[w] / (1 + sum(c.values())) * math.log(n / df[w]) for w in set(words(query)) if w in c)

        ranked = sorted(zip(self.documents, counts), key=lambda dc: score(dc[1]), reverse=True)
        return [d for d, _ in ranked[: self.k]]


def load_documents() -> list[Document]:
    docs = []
    for name in MODULES:
        module = importlib.import_module(name)
        docs.append(Document(page_content=(inspect.getdoc(module) or "")[:300], metadata={"module": name}))
    return docs


def main() -> None:
    retriever = TfidfRetriever(documents=load_documents())
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer from the documentation below.\n\n{context}"),
        ("human", "{question}"),
    ])
    chain = (
        {"context": retriever | (lambda docs: "\n\n".join(f"[{d.metadata['module']}] {d.page_content}" for d in docs)),
         "question": RunnablePassthrough()}
        | prompt
        | ChatDiffuSpec(max_tokens=MAX_TOKENS)
    )
    question = "How do I read rows from a CSV file?"
    print(f"Q: {question}\nA: ", end="", flush=True)
    total = None
    for chunk in chain.stream(question):
        print(chunk.content, end="", flush=True)
        meta = chunk.response_metadata
        for accepted, drafted in zip(meta.get("accepted_tokens", []), meta.get("draft_lengths", [])):
            print(f"[step: {accepted}/{drafted} drafted tokens accepted]", file=sys.stderr)
        total = chunk if total is None else total + chunk
    meta = total.response_metadata
    print(f"\n\nMAT {meta['mean_accepted_tokens']:.2f}, acceptance {meta['acceptance_rate']:.0%}, "
          f"{meta['tokens_per_second']:.1f} tokens/s, usage {total.usage_metadata}")


if __name__ == "__main__":
    main()
