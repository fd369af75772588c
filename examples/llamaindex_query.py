"""A LlamaIndex ``VectorStoreIndex`` and streaming query engine on the embedded demo pair, fully offline.

The embedding is a small local one that needs no download: hashed bag of words (each word and word pair
hashed into 512 dimensions, L2-normalised). The documents are one-line docs of standard-library functions
(``stdlib_docs.py``); the question and the retrieved docs go to the model through its chat template, and each
speculative step's instrumentation event is printed to stderr as it fires.
"""

import math
import os
import re
import sys
import zlib

from llama_index.core import Document, PromptTemplate, Settings, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.llms.diffuspec import DiffuSpecLLM, DiffuSpecStepEvent
from stdlib_docs import snippets

from diffuspec.stats import repeated_ngram_share

MODULES = ["argparse", "json", "pathlib", "shutil", "textwrap", "itertools", "functools", "heapq", "bisect"]
QUESTIONS = ["What does itertools.chain do?", "How do I use textwrap.dedent?"]
MAX_TOKENS = int(os.environ.get("DIFFUSPEC_EXAMPLE_TOKENS", "64"))


class HashingEmbedding(BaseEmbedding):
    """Feature hashing of words and word pairs: a lexical embedding computed locally."""

    dimensions: int = 512

    @classmethod
    def class_name(cls) -> str:
        return "HashingEmbedding"

    def _embed(self, text: str) -> list[float]:
        words = re.findall(r"[a-z0-9]+", text.lower())
        vector = [0.0] * self.dimensions
        for feature in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
            vector[zlib.crc32(feature.encode()) % self.dimensions] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed(text)


class PrintSteps(BaseEventHandler):
    mean_accepted_tokens: float = 0.0  # the running MAT of the latest step

    @classmethod
    def class_name(cls) -> str:
        return "PrintSteps"

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, DiffuSpecStepEvent):
            self.mean_accepted_tokens = event.mean_accepted_tokens
            print(f"[step: {event.accepted_tokens}/{event.draft_length} accepted, running MAT "
                  f"{event.mean_accepted_tokens:.2f}]", file=sys.stderr)


def main() -> None:
    llm = DiffuSpecLLM(max_new_tokens=MAX_TOKENS)
    Settings.llm = llm
    Settings.embed_model = HashingEmbedding()
    Settings.tokenizer = llm.get_engine().tokenizer.encode  # count tokens offline with the model's tokenizer
    steps = PrintSteps()
    get_dispatcher().add_event_handler(steps)
    docs = [Document(text=text, metadata={"name": name}, excluded_llm_metadata_keys=["name"])
            for name, text in snippets(MODULES)]
    index = VectorStoreIndex.from_documents(docs)
    # The layout the demo model was tuned on; LlamaIndex's default template alone nearly fills its 512 tokens.
    qa = PromptTemplate("Context:\n{context_str}\n\nQuestion: {query_str}")
    engine = index.as_query_engine(streaming=True, similarity_top_k=3, text_qa_template=qa,
                                   response_mode="simple_summarize")
    tokenizer = llm.get_engine().tokenizer
    for question in QUESTIONS:
        print(f"Q: {question}\nA: ", end="", flush=True)
        response = engine.query(question)
        answer = ""
        for text in response.response_gen:
            answer += text
            print(text, end="", flush=True)
        sources = ", ".join(n.node.metadata["name"] for n in response.source_nodes)
        repeated = repeated_ngram_share(tokenizer(answer)["input_ids"])
        print(f"\n  (retrieved: {sources}; MAT {steps.mean_accepted_tokens:.2f}, repeated 4-gram share {repeated:.0%})\n")


if __name__ == "__main__":
    main()
