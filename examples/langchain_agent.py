"""A tool-using agent loop with LangChain on the embedded demo pair.

The model is offered tools through ``bind_tools``; every ``<tool_call>`` it writes is parsed into
``AIMessage.tool_calls``, run, and answered with a ``ToolMessage`` until the model answers in plain text.
The tiny demo model rarely calls tools; point ``ChatDiffuSpec(target=..., drafter=...)`` at an instruct model
with a tool-aware chat template (e.g. Qwen2.5-Instruct) for real tool use. ``langchain.agents.create_agent``
accepts ``ChatDiffuSpec`` the same way.
"""

import os

from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_diffuspec import ChatDiffuSpec

MAX_TOKENS = int(os.environ.get("DIFFUSPEC_EXAMPLE_TOKENS", "96"))


@tool
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


@tool
def python_keywords(prefix: str) -> list[str]:
    """List the Python keywords that start with a prefix."""
    import keyword

    return [k for k in keyword.kwlist if k.startswith(prefix)]


def main(max_turns: int = 3) -> None:
    tools = {t.name: t for t in (word_count, python_keywords)}
    model = ChatDiffuSpec(max_tokens=MAX_TOKENS).bind_tools(list(tools.values()))
    messages = [SystemMessage("You are a Python assistant."), HumanMessage("Which Python keywords start with 'i'?")]
    for turn in range(max_turns):
        reply = model.invoke(messages)
        messages.append(reply)
        meta = reply.response_metadata
        print(f"--- turn {turn + 1}: MAT {meta['mean_accepted_tokens']:.2f}, {len(reply.tool_calls)} tool call(s)")
        if not reply.tool_calls:
            print(reply.content)
            break
        for call in reply.tool_calls:
            result = tools[call["name"]].invoke(call["args"])
            print(f"{call['name']}({call['args']}) -> {result}")
            messages.append(ToolMessage(str(result), tool_call_id=call["id"], name=call["name"]))


if __name__ == "__main__":
    main()
