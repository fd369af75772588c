"""Framework clients against a live server on the tiny preset: LangChain's ``ChatOpenAI`` in an LCEL RAG chain,
and LlamaIndex's ``OpenAILike`` (completion, chat, streaming, a query engine). Greedy answers are compared with
what the ``openai`` client gets for the same messages, so a client that sent something else would fail."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_openai import ChatOpenAI
from live_server import WAIT, LiveServer
from llama_index.core import Document as LlamaDocument
from llama_index.core import VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.embeddings import MockEmbedding
from llama_index.llms.openai_like import OpenAILike

from diffuspec import DiffuSpec
from diffuspec.server.app import EngineBackend

DOCS = ["The os module talks to the operating system.", "The json module reads and writes JSON.",
        "The re module matches regular expressions.", "The csv module reads comma-separated files."]
QUESTION = "Which module reads JSON?"


@pytest.fixture(scope="module")
def server():
    live = LiveServer(EngineBackend(DiffuSpec.from_pretrained("tiny", device="cpu")), "tiny")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.openai_client()


def test_an_lcel_rag_chain_on_chat_openai(server, client):
    store = InMemoryVectorStore.from_documents([Document(d) for d in DOCS], DeterministicFakeEmbedding(size=32))
    retriever = store.as_retriever(search_kwargs={"k": 2})
    prompt = ChatPromptTemplate.from_messages([("system", "Answer from this context:\n{context}"),
                                               ("human", "{question}")])
    llm = ChatOpenAI(model="tiny", base_url=server.base_url, api_key="none", temperature=0, max_tokens=24,
                     max_retries=0)

    def context(docs):
        return "\n".join(d.page_content for d in docs)

    chain = {"context": retriever | context, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()
    answer = chain.invoke(QUESTION)
    shown = context(retriever.invoke(QUESTION))
    direct = client.chat.completions.create(model="tiny", temperature=0, max_tokens=24, messages=[
        {"role": "system", "content": f"Answer from this context:\n{shown}"}, {"role": "user", "content": QUESTION}])
    assert answer == direct.choices[0].message.content and answer
    assert "".join(chain.stream(QUESTION)) == answer  # streamed through the chain, the same text


def test_llamaindex_openai_like(server, client):
    chat = OpenAILike(model="tiny", api_base=server.base_url, api_key="none", is_chat_model=True, context_window=512,
                      max_tokens=24, temperature=0, max_retries=0, timeout=WAIT * 5)
    messages = [ChatMessage(role="user", content=QUESTION)]
    answer = chat.chat(messages).message.content
    direct = client.chat.completions.create(model="tiny", temperature=0, max_tokens=24,
                                            messages=[{"role": "user", "content": QUESTION}])
    assert answer == direct.choices[0].message.content
    assert "".join(r.delta or "" for r in chat.stream_chat(messages)) == answer

    text = OpenAILike(model="tiny", api_base=server.base_url, api_key="none", is_chat_model=False,
                      context_window=512, max_tokens=24, temperature=0, max_retries=0, timeout=WAIT * 5)
    completion = text.complete("def read_lines(path):\n").text
    assert completion == client.completions.create(model="tiny", prompt="def read_lines(path):\n", max_tokens=24,
                                                   temperature=0).choices[0].text

    index = VectorStoreIndex.from_documents([LlamaDocument(text=d) for d in DOCS], embed_model=MockEmbedding(embed_dim=8))
    response = index.as_query_engine(llm=chat, similarity_top_k=2, response_mode="simple_summarize").query(QUESTION)
    assert response.response and len(response.source_nodes) == 2
