"""A tool-using agent with LangChain's ``create_agent`` on the embedded demo pair, fully offline.

``create_agent`` binds the tools to ``ChatDiffuSpec``; the model answers with a ``<tool_call>`` (parsed into
``AIMessage.tool_calls``), the agent runs the tool and returns a ``ToolMessage``, and the model answers with
the result. Every message of each run is printed, with MAT and the repeated 4-gram share of each model turn.
"""

import os

from langchain.agents import create_agent
from langgraph.errors import GraphRecursionError
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langchain_diffuspec import ChatDiffuSpec

from diffuspec.stats import repeated_ngram_share

MAX_TOKENS = int(os.environ.get("DIFFUSPEC_EXAMPLE_TOKENS", "64"))
FORECASTS = {"oslo": "rain, 9 C", "lima": "sunny, 24 C", "tokyo": "cloudy, 17 C"}
REQUESTS = ["Use the get_weather tool with city Oslo.", "Call word_count with text=hello."]


@tool
def get_weather(city: str) -> str:
    """Get the weather."""
    return FORECASTS.get(city.lower(), "unknown")


@tool
def word_count(text: str) -> int:
    """Count the words."""
    return len(text.split())


def main() -> None:
    model = ChatDiffuSpec(max_tokens=MAX_TOKENS)
    agent = create_agent(model, tools=[get_weather, word_count])
    executed = 0
    for request in REQUESTS:
        print(f"user: {request}")
        try:
            result = agent.invoke({"messages": [("user", request)]}, {"recursion_limit": 6})
        except GraphRecursionError:  # a small model may keep calling tools that do not exist
            print("the agent stopped: no final answer within 6 steps\n")
            continue
        for message in result["messages"][1:]:
            if isinstance(message, AIMessage):
                meta = message.response_metadata
                repeated = repeated_ngram_share(model.get_token_ids(message.content))
                figures = f"(MAT {meta['mean_accepted_tokens']:.2f}, repeated 4-gram share {repeated:.0%})"
                for call in message.tool_calls:
                    print(f"assistant calls {call['name']}({call['args']}) {figures}")
                if message.content:
                    print(f"assistant: {message.content} {figures}")
            elif isinstance(message, ToolMessage):
                executed += message.status == "success"
                print(f"tool {message.name} -> {message.content}")
        print()
    print(f"{executed} tool call(s) executed")


if __name__ == "__main__":
    main()
