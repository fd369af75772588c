"""``with_structured_output`` for ChatDiffuSpec: through a forced tool call ("function_calling"), or a JSON
answer the prompt asks for ("json_schema", "json_mode"). The answer is parsed and validated; when it does not
fit, the caller gets an ``OutputParserException`` (or, with ``include_raw=True``, the raw message and the
error), never a silent None."""

from __future__ import annotations

import json
from operator import itemgetter
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.json import parse_json_markdown
from pydantic import BaseModel, ValidationError
from pydantic.v1 import BaseModel as BaseModelV1
from pydantic.v1 import ValidationError as ValidationErrorV1

from diffuspec.errors import DiffuSpecError

METHODS = ("function_calling", "json_schema", "json_mode")


def _validated(schema: Any, data: Any, message: AIMessage) -> Any:
    """An instance of ``schema`` when it is a pydantic class (v2, or v1 from ``pydantic.v1``), else ``data``."""
    if isinstance(schema, type) and issubclass(schema, (BaseModel, BaseModelV1)):
        try:
            return schema.model_validate(data) if issubclass(schema, BaseModel) else schema.parse_obj(data)
        except (ValidationError, ValidationErrorV1) as e:
            raise OutputParserException(f"the answer does not fit {schema.__name__}: {e}",
                                        llm_output=message.text) from e
    return data  # a JSON schema or TypedDict: the dict itself, as LangChain returns it


def _tool_parser(schema: Any, name: str):
    def parse(message: AIMessage) -> Any:
        for call in message.tool_calls:
            if call["name"] == name:
                return _validated(schema, call["args"], message)
        errors = [c.get("error") or "malformed" for c in message.invalid_tool_calls]
        errors += message.response_metadata.get("tool_call_errors", [])
        raise OutputParserException(
            f"the model did not call {name!r}: {'; '.join(dict.fromkeys(errors)) or 'no tool call'}",
            llm_output=message.text,
        )

    return parse


def _json_parser(schema: Any):
    def parse(message: AIMessage) -> Any:
        try:
            data = parse_json_markdown(message.text)
        except (json.JSONDecodeError, ValueError) as e:
            raise OutputParserException(f"the answer is not a JSON object: {e}", llm_output=message.text) from e
        if not isinstance(data, dict):
            raise OutputParserException("the answer is JSON but not an object", llm_output=message.text)
        return _validated(schema, data, message)

    return parse


def structured_output(
    chat: Any, schema: Any, *, method: str, include_raw: bool, strict: bool | None
) -> Runnable:
    """``chat`` answering in ``schema``'s shape (see the module docstring); ``strict`` changes nothing:
    answers are always validated against a pydantic schema, and generation cannot be constrained."""
    if method not in METHODS:
        raise DiffuSpecError(f"method {method!r} is unknown: use one of {', '.join(METHODS)}")
    if schema is None and method != "json_mode":
        raise DiffuSpecError(f"method={method!r} needs a schema (only json_mode works without one)")
    tool = convert_to_openai_tool(schema) if schema is not None else None
    trace = {"ls_structured_output_format": {"kwargs": {"method": method, "strict": strict}, "schema": tool}}
    if method == "function_calling":
        name = tool["function"]["name"]
        model, parse = chat.bind_tools([tool], tool_choice=name, **trace), _tool_parser(schema, name)
    else:
        response_format = {"type": "json_object"}
        if method == "json_schema":
            response_format = {"type": "json_schema", "json_schema": {"schema": tool["function"]["parameters"]}}
        model, parse = chat.bind(response_format=response_format, **trace), _json_parser(schema)
    parser = RunnableLambda(parse)
    if not include_raw:
        return model | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=model) | parsed.with_fallbacks([failed], exception_key="parsing_error")
