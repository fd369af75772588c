"""Retrieval-augmented generation with LangChain on the embedded demo pair, fully offline.

The documents are one-line docs of standard-library functions (``stdlib_docs.py``); a small TF-IDF retriever
picks the three most relevant, a chat prompt puts them in the system message, and ``ChatDiffuSpec`` streams the
answer, each speculative step's acceptance figures going to stderr as they arrive. The summary reports MAT
beside the share of the answer inside repeated 4-grams (so a degenerate loop cannot pass as a fast answer).
"""

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
from stdlib_docs import snippets

from diffuspec.stats import repeated_ngram_share

MODULES = ["csv", "json", "pathlib", "shutil", "textwrap", "heapq", "bisect", "glob", "fnmatch", "base64"]
QUESTIONS = ["What does shutil.copyfile do?", "How do I use heapq.heappush?", "What is the base64 module for?"]
MAX_TOKENS = int(os.environ.get("DIFFUSPEC_EXAMPLE_TOKENS", "64"))


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]{2,}", text.lower())


class TfidfRetriever(BaseRetriever):
    """Lexical retrieval: the k documents with the highest TF-IDF overlap with the query."""

    documents: list[Document]
    k: int = 3

    def _get_relevant_documents(self, query: str, *, run_manager=None) -> list[Document]:
        counts = [Counter(words(d.page_content)) for d in self.documents]
        df = Counter(w for c in counts for w in c)
        n = len(self.documents)

        def score(c: Counter) -> float:
            return sum(c[w] / sum(c.values()) * math.log(n / df[w]) for w in set(words(query)) if w in c)

        ranked = sorted(zip(self.documents, counts), key=lambda dc: score(dc[1]), reverse=True)
        return [d for d, _ in ranked[: self.k]]


def main() -> None:
    retriever = TfidfRetriever(documents=[Document(page_content=text, metadata={"name": name})
                                          for name, text in snippets(MODULES)])
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer from the documentation below.\n\n{context}"),
        ("human", "{question}"),
    ])
    model = ChatDiffuSpec(max_tokens=MAX_TOKENS)
    chain = (
        {"context": retriever | (lambda docs: "\n\n".join(d.page_content for d in docs)),
         "question": RunnablePassthrough()}
        | prompt
        | model
    )
    for question in QUESTIONS:
        print(f"Q: {question}\nA: ", end="", flush=True)
        total = None
        for chunk in chain.stream(question):
            print(chunk.content, end="", flush=True)
            meta = chunk.response_metadata
            for accepted, drafted in zip(meta.get("accepted_tokens", []), meta.get("draft_lengths", [])):
                print(f"[step: {accepted}/{drafted} drafted tokens accepted]", file=sys.stderr)
            total = chunk if total is None else total + chunk
        meta = total.response_metadata
        repeated = repeated_ngram_share(model.get_token_ids(total.content))
        print(f"\n  (MAT {meta['mean_accepted_tokens']:.2f}, acceptance {meta['acceptance_rate']:.0%}, "
              f"repeated 4-gram share {repeated:.0%}, {meta['tokens_per_second']:.1f} tokens/s, "
              f"{total.usage_metadata['output_tokens']} tokens)\n")


if __name__ == "__main__":
    main()
