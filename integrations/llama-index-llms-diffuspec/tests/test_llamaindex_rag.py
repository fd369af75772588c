"""The documented RAG path: a real VectorStoreIndex and its query engine, with Settings.tokenizer from the
engine. The embedding is a small deterministic one written here (no download): a stand-in for that part only.

LlamaIndex 0.14's compact/refine modes reserve a fixed 500 tokens (refine.py's DEFAULT_RESPONSE_PADDING_SIZE)
on top of ``num_output`` when they pack context, so they need a context window above ~800 tokens; the demo
pair's is 512, where "simple_summarize" fits. Compact runs here on a model with a 2048-token window."""

import inspect
import json
import math
import os
import textwrap
import zlib

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding
from llama_index.llms.diffuspec import DiffuSpecLLM
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from diffuspec import DiffuSpec, DiffuSpecConfig
from diffuspec.loading import embedded_paths

QUESTION = "How do I decode a JSON document?"


class HashEmbedding(BaseEmbedding):
    """Bag of words hashed into 64 dimensions, L2-normalised."""

    def _vector(self, text: str) -> list[float]:
        vector = [0.0] * 64
        for word in text.lower().split():
            vector[zlib.crc32(word.encode()) % 64] += 1.0
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        return [x / norm for x in vector]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)


@pytest.fixture
def settings():
    """Settings is global: set it as the README says, and put it back afterwards."""
    saved = {name: getattr(Settings, name) for name in ("_llm", "_embed_model", "_tokenizer")}
    yield Settings
    for name, value in saved.items():
        setattr(Settings, name, value)


def _index() -> VectorStoreIndex:
    docs = [Document(text=inspect.getdoc(module)) for module in (json, os.path, textwrap, zlib)]
    return VectorStoreIndex.from_documents(docs)


@pytest.fixture(scope="module")
def demo_tokenizer():
    return AutoTokenizer.from_pretrained(embedded_paths()["target"])


def test_query_engine_on_the_demo_pair(settings, monkeypatch):
    llm = DiffuSpecLLM()
    settings.llm, settings.embed_model, settings.tokenizer = llm, HashEmbedding(), llm.tokenizer
    engine, lengths = llm.get_engine(), []

    def recording(prompt_ids, **kwargs):  # the prompt length of every call the query engine makes
        lengths.append(len(prompt_ids))
        return stream(prompt_ids, **kwargs)

    stream = engine.stream
    monkeypatch.setattr(engine, "stream", recording)
    response = _index().as_query_engine(response_mode="simple_summarize").query(QUESTION)
    assert isinstance(response.response, str) and len(response.source_nodes) == 2
    # Packed by the engine's own token counts, the prompt fits the window with about num_output to spare (a few
    # tokens either way: text counted in pieces tokenizes a little differently from the whole, and the chat
    # template's turn markers add about 20).
    window, room = llm.metadata.context_window, llm.metadata.num_output
    assert lengths and all(window - room - 16 <= n < window - room + 24 for n in lengths)


def test_default_compact_query_engine_with_room_for_it(settings, demo_tokenizer):
    config = LlamaConfig(vocab_size=len(demo_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         eos_token_id=demo_tokenizer.eos_token_id)
    engine = DiffuSpec(LlamaForCausalLM(config).eval(), None, demo_tokenizer, DiffuSpecConfig(mode="ar"))
    llm = DiffuSpecLLM(engine=engine, model_name="tiny-2048", max_new_tokens=16)
    settings.llm, settings.embed_model, settings.tokenizer = llm, HashEmbedding(), llm.tokenizer
    assert llm.metadata.context_window == 2048
    response = _index().as_query_engine().query(QUESTION)  # default: compact, top 2
    assert isinstance(response.response, str) and len(response.source_nodes) == 2
