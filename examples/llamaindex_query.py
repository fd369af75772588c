"""A LlamaIndex keyword index and streaming query engine on the embedded demo pair, fully offline,
printing each speculative step's instrumentation event as it fires."""

import importlib
import inspect
import os
import sys

from llama_index.core import Document, PromptTemplate, Settings, SimpleKeywordTableIndex
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.llms.diffuspec import DiffuSpecLLM, DiffuSpecStepEvent

MODULES = ["json", "csv", "pathlib", "argparse", "textwrap", "itertools", "functools", "shutil"]
MAX_TOKENS = int(os.environ.get("DIFFUSPEC_EXAMPLE_TOKENS", "96"))


class PrintSteps(BaseEventHandler):
    @classmethod
    def class_name(cls) -> str:
        return "PrintSteps"

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, DiffuSpecStepEvent):
            print(f"[step: {event.accepted_tokens}/{event.draft_length} accepted, running MAT "
                  f"{event.mean_accepted_tokens:.2f}]", file=sys.stderr)


def main() -> None:
    llm = DiffuSpecLLM(max_new_tokens=MAX_TOKENS)
    Settings.llm = llm
    Settings.tokenizer = llm.get_engine().tokenizer.encode  # count tokens offline with the model's tokenizer
    get_dispatcher().add_event_handler(PrintSteps())
    docs = [Document(text=(inspect.getdoc(importlib.import_module(m)) or "")[:400], metadata={"module": m})
            for m in MODULES]
    index = SimpleKeywordTableIndex.from_documents(docs)
    # A short template: LlamaIndex's default one alone nearly fills the demo model's 512-token window.
    qa = PromptTemplate("Documentation:\n{context_str}\n\nQuestion: {query_str}\nAnswer:")
    engine = index.as_query_engine(streaming=True, text_qa_template=qa, response_mode="simple_summarize")
    response = engine.query("How do I parse command line arguments?")
    for text in response.response_gen:
        print(text, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
