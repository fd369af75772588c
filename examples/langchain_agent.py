"""A tool-using agent with LangChain's ``create_agent`` on the default model, fully offline.

``create_agent`` binds the tools to ``ChatDiffuSpec``; the model answers with a ``<tool_call>`` (parsed into
``AIMessage.tool_calls``), the agent runs the tool and returns a ``ToolMessage``, and the model answers with the
result. Every message of each run is printed, with MAT and the repeated 4-gram share of each model turn.
"""

from handbook import MAX_TOKENS, MODEL
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langchain_diffuspec import ChatDiffuSpec
from langgraph.errors import GraphRecursionError

from diffuspec.stats import repeated_ngram_share

FORECASTS = {"oslo": "rain, 9 C", "lima": "sunny, 24 C", "tokyo": "cloudy, 17 C"}
RATES = {("EUR", "USD"): 1.08, ("USD", "EUR"): 0.93, ("EUR", "GBP"): 0.85}
REQUESTS = ["What is the weather in Oslo?", "Convert 120 EUR to USD."]


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return FORECASTS.get(city.lower(), "unknown")


@tool
def convert_currency(amount: float, source: str, target: str) -> str:
    """Convert an amount of money from one currency to another (ISO codes such as EUR, USD)."""
    rate = RATES.get((source.upper(), target.upper()))
    return "unknown rate" if rate is None else f"{amount * rate:.2f} {target.upper()}"


def main() -> None:
    model = ChatDiffuSpec(target=MODEL, max_tokens=MAX_TOKENS)
    agent = create_agent(model, tools=[get_weather, convert_currency])
    executed = 0
    for request in REQUESTS:
        print(f"user: {request}")
        try:
            result = agent.invoke({"messages": [("user", request)]}, {"recursion_limit": 6})
        except GraphRecursionError:  # a model that keeps calling tools without answering
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
