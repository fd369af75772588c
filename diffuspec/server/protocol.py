"""OpenAI's chat and completions API, translated: a request body checked and turned into prompt ids and
``GenerationParams`` (a ``Call``), and a generation's events turned into OpenAI's responses and stream chunks
(a ``Translation``). Chat formatting, tools and JSON answers are the engine package's (``chat_turn``); here
only the shapes change.

Fields OpenAI defines that diffuspec does not implement are accepted only at the value that asks for nothing
(``n=1``, ``logprobs=false``, penalties 0, ...) and refused by name otherwise; fields OpenAI does not define
are refused."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..chat import canonical_role
from ..chat_turn import Answer, AnswerReader, ChatTurn, prepare_turn
from ..errors import DiffuSpecError
from ..events import StepEvent
from ..integration import default_answer_tokens
from ..params import GenerationParams
from ..stats import DecodingStats
from ..tools import ToolSpec


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


_PENALTY = "diffuspec reproduces the target's own distribution exactly and does not reshape it"
# Defined by OpenAI, not implemented: the values that ask for nothing, and why others are refused.
UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((1,), "one choice per request is returned: send n requests (with different seeds)"),
    "best_of": ((1,), "one choice per request is returned"),
    "logprobs": ((False, 0), "log-probabilities are not returned"),
    "top_logprobs": ((0,), "log-probabilities are not returned"),
    "echo": ((False,), "the prompt is not echoed"),
    "suffix": (("",), "insertion (suffix) is not supported"),
    "presence_penalty": ((0,), _PENALTY),
    "frequency_penalty": ((0,), _PENALTY),
    "logit_bias": (({},), _PENALTY),
    "parallel_tool_calls": ((True,), "every tool call the answer holds is returned; it cannot be limited to one"),
    "functions": ((), "the legacy function-calling fields are not supported: use tools"),
    "function_call": ((), "the legacy function-calling fields are not supported: use tool_choice"),
    "audio": ((), "only text is generated"),
    "modalities": ((["text"],), "only text is generated"),
    "prediction": ((), "predicted outputs are not supported"),
    "reasoning_effort": ((), "the model has no reasoning-effort setting"),
    "verbosity": ((), "the model has no verbosity setting"),
    "web_search_options": ((), "web search is not supported"),
    "service_tier": (("auto", "default"), "there is one service tier"),
    "store": ((False,), "completions are not stored"),
    "metadata": (({},), "completions are not stored, so they take no metadata"),
    "moderation": ((), "moderation is not supported"),
    "prompt_cache_key": ((), "prompt caching is not supported"),
    "prompt_cache_options": ((), "prompt caching is not supported"),
    "prompt_cache_retention": ((), "prompt caching is not supported"),
}
COMMON = ("model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "user",
          "safety_identifier")
CHAT_FIELDS = (*COMMON, "messages", "max_completion_tokens", "tools", "tool_choice", "response_format")
COMPLETION_FIELDS = (*COMMON, "prompt")
CHAT_UNSUPPORTED = tuple(k for k in UNSUPPORTED if k not in ("best_of", "echo", "suffix"))
COMPLETION_UNSUPPORTED = ("n", "best_of", "logprobs", "echo", "suffix", "presence_penalty", "frequency_penalty",
                          "logit_bias")
MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id", "refusal")


def check_fields(body: Any, supported: tuple[str, ...], unsupported: tuple[str, ...]) -> dict[str, Any]:
    """``body`` as a JSON object whose fields are all known; unsupported ones only at their neutral values."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    for name, value in body.items():
        if name in supported:
            continue
        if name in unsupported:
            neutral, why = UNSUPPORTED[name]
            if value is None or any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in neutral):
                continue
            raise APIError(400, f"{name}={json.dumps(value)} is not supported: {why}", param=name,
                           code="unsupported_parameter")
        raise APIError(400, f"unknown field {name!r}: this endpoint takes {', '.join(sorted(supported))}",
                       param=name, code="unknown_parameter")
    return body


def _typed(body: Mapping[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
        raise APIError(400, f"{name} must be {what}, got {json.dumps(value)}", param=name)
    return value


@dataclass(frozen=True)
class Call:
    """One checked request: what to generate and how to answer."""

    kind: str  # "chat" | "completion"
    model: str
    prompt_ids: list[int]
    params: GenerationParams
    stream: bool
    include_usage: bool
    turn: ChatTurn = field(default_factory=lambda: ChatTurn([]))


def _common(body: Mapping[str, Any], served: str, context_window: int) -> dict[str, Any]:
    model = _typed(body, "model", (str,), "the served model's name")
    if model is None:
        raise APIError(400, f"model is missing: pass model={served!r}", param="model")
    if model != served:
        raise APIError(404, f"the model {model!r} does not exist here: this server serves {served!r}", param="model",
                       code="model_not_found")
    stream = _typed(body, "stream", (bool,), "true or false") or False
    options = _typed(body, "stream_options", (dict,), 'an object such as {"include_usage": true}') or {}
    if options and not stream:
        raise APIError(400, "stream_options needs stream=true", param="stream_options")
    unknown = set(options) - {"include_usage", "include_obfuscation"}
    if unknown:
        raise APIError(400, f"stream_options takes include_usage, not {', '.join(sorted(unknown))}",
                       param="stream_options")
    for name in ("max_tokens", "max_completion_tokens", "top_k", "seed"):
        _typed(body, name, (int,), "an integer")
    for name in ("temperature", "top_p"):
        _typed(body, name, (int, float), "a number")
    sized = {k: body[k] for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None}
    if len(set(sized.values())) > 1:
        raise APIError(400, "max_tokens and max_completion_tokens differ: pass one", param="max_completion_tokens")
    temperature = body.get("temperature")
    try:
        params = GenerationParams(
            max_new_tokens=next(iter(sized.values()), None) or default_answer_tokens(context_window),
            temperature=1.0 if temperature is None else temperature,  # OpenAI's default: sampling
            top_k=body.get("top_k"), top_p=body.get("top_p"), stop=body.get("stop"), seed=body.get("seed"),
        )
    except DiffuSpecError as error:
        raise APIError(400, str(error)) from None
    return {"model": model, "params": params, "stream": stream, "include_usage": bool(options.get("include_usage"))}


def check_prompt_length(prompt_ids: list[int], context_window: int, param: str) -> None:
    """A 400 naming ``param`` (the field holding the prompt) when the prompt leaves no room to answer."""
    if len(prompt_ids) >= context_window:
        raise APIError(400, f"the prompt has {len(prompt_ids)} tokens but the model's context window is "
                       f"{context_window}: shorten it to at most {context_window - 1} tokens",
                       param=param, code="context_length_exceeded")


def _text(content: Any, where: str) -> str:
    """A message's content as text: a string, null, or text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise APIError(400, f"{where} must be a string or a list of text parts", param=where)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise APIError(400, f"{where}[{j}] is a {kind!r} part: only text parts are supported", param=where)
        texts.append(part["text"])
    return "".join(texts)


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI messages as transformers chat-template dicts (tool-call arguments as objects, tool results named
    after the call they answer)."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
    out, names = [], {}
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or "role" not in message:
            raise APIError(400, f"{where} must be an object with a role", param=where)
        unknown = set(message) - set(MESSAGE_FIELDS)
        if unknown:
            raise APIError(400, f"{where} has unknown field(s) {', '.join(sorted(unknown))}: a message takes "
                           f"{', '.join(MESSAGE_FIELDS)}", param=where)
        try:
            role = canonical_role(message["role"])
        except DiffuSpecError as error:
            raise APIError(400, f"{where}: {error}", param=where) from None
        entry: dict[str, Any] = {"role": role, "content": _text(message.get("content"), f"{where}.content")}
        calls = []
        for j, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise APIError(400, f"{where}.tool_calls[{j}] must be {{id, type: function, function: {{name, "
                               "arguments}}}", param=where)
            arguments = function.get("arguments") or "{}"
            try:
                arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
            except json.JSONDecodeError as error:
                raise APIError(400, f"{where}.tool_calls[{j}].function.arguments is not valid JSON ({error})",
                               param=where) from None
            names[call.get("id")] = function["name"]
            calls.append({"type": "function", "function": {"name": function["name"], "arguments": arguments}})
        if calls:
            entry["tool_calls"] = calls
        if role == "tool":
            entry["tool_call_id"] = message.get("tool_call_id")
            name = message.get("name") or names.get(message.get("tool_call_id"))
            if name:
                entry["name"] = name
        out.append(entry)
    return out


def chat_call(body: Any, served: str, tokenizer: Any, context_window: int) -> Call:
    body = check_fields(body, CHAT_FIELDS, CHAT_UNSUPPORTED)
    common = _common(body, served, context_window)
    messages = chat_messages(body.get("messages"))
    try:
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise DiffuSpecError("tools must be a list of tools")
        choice = body.get("tool_choice")
        spec = ToolSpec.of(tools or [], choice) if tools or choice is not None else None
        turn = prepare_turn(tokenizer, messages, spec, body.get("response_format"))
    except DiffuSpecError as error:
        raise APIError(400, str(error)) from None
    check_prompt_length(turn.prompt_ids, context_window, "messages")
    return Call("chat", prompt_ids=turn.prompt_ids, turn=turn, **common)


def completion_call(body: Any, served: str, tokenizer: Any, context_window: int, vocab_size: int) -> Call:
    body = check_fields(body, COMPLETION_FIELDS, COMPLETION_UNSUPPORTED)
    common = _common(body, served, context_window)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and prompt:
        ids = tokenizer(prompt)["input_ids"]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the model's vocabulary (0..{vocab_size - 1})",
                           param="prompt")
        ids = list(prompt)
    elif isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        raise APIError(400, f"prompt holds {len(prompt)} prompts: send one request per prompt", param="prompt",
                       code="unsupported_parameter")
    else:
        raise APIError(400, "prompt must be a non-empty string or a non-empty list of token ids", param="prompt")
    check_prompt_length(ids, context_window, "prompt")
    return Call("completion", prompt_ids=ids, **common)


# ----- answers ------------------------------------------------------------------------------------------------

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}


def speculative_stats(stats: DecodingStats, queue_seconds: float | None = None) -> dict[str, Any]:
    """The ``diffuspec`` extension field of a response: how the speculative decoding went."""
    return {
        "steps": stats.steps,
        "drafted_tokens": stats.drafted_tokens,
        "accepted_tokens": stats.accepted_tokens,
        "mean_accepted_tokens": stats.mean_accepted_tokens,
        "acceptance_rate": stats.acceptance_rate,
        "tokens_per_step": stats.tokens_per_step,
        "draft_lengths": list(stats.draft_lengths),
        "accepted_lengths": list(stats.accepted_lengths),
        "per_position_acceptance": stats.per_position_acceptance,
        "target_forwards": stats.target_forwards,
        "decode_seconds": stats.wall_seconds,
        "queue_seconds": queue_seconds,
    }


class Translation:
    """Events of one call into OpenAI's chunks (``step``, ``finish``) and, after ``finish``, the whole response
    (``response``). Chat answers are read by ``chat_turn.AnswerReader`` (tool calls held back and parsed)."""

    def __init__(self, call: Call) -> None:
        self.call = call
        prefix = "chatcmpl" if call.kind == "chat" else "cmpl"
        self.id, self.created = f"{prefix}-{uuid.uuid4().hex}", int(time.time())
        self.reader = AnswerReader(call.turn)
        self.answer: Answer | None = None
        self.last: StepEvent | None = None
        self.queue_seconds: float | None = None
        self.replica: str | None = None  # which replica decoded it, when there are several

    # ----- the pieces ------------------------------------------------------------------------------------

    def _envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        kind = {"chat": "chat.completion", "completion": "text_completion"}[self.call.kind]
        return {"id": self.id, "object": kind + (".chunk" if chunk and self.call.kind == "chat" else ""),
                "created": self.created, "model": self.call.model, "choices": choices}

    def _choice(self, content: str | None, *, chunk: bool, role: bool = False, tool_calls: list | None = None,
                finish: str | None = None) -> dict[str, Any]:
        if self.call.kind == "completion":
            return {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}
        message: dict[str, Any] = {"role": "assistant"} if role or not chunk else {}
        if content is not None or not chunk:
            message["content"] = content
        if tool_calls:
            message["tool_calls"] = tool_calls
        key = "delta" if chunk else "message"
        return {"index": 0, key: message, "logprobs": None, "finish_reason": finish}

    def usage(self) -> dict[str, int]:
        generated = self.last.stats.new_tokens if self.last else 0
        prompt = len(self.call.prompt_ids)
        return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}

    def finish_reason(self) -> str:
        if self.answer is not None and self.answer.calls:
            return "tool_calls"
        return FINISH_REASONS[self.last.finish_reason]

    def _extension(self) -> dict[str, Any]:
        extension = speculative_stats(self.last.stats, self.queue_seconds)
        if self.replica is not None:
            extension["replica"] = self.replica
        if self.answer is not None and self.answer.invalid_calls:
            extension["tool_call_errors"] = [c.error for c in self.answer.invalid_calls]
        return extension

    def _tool_calls(self, streamed: bool) -> list[dict[str, Any]]:
        calls = self.answer.calls if self.answer else []
        return [{**({"index": i} if streamed else {}), "id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": json.dumps(c.arguments)}} for i, c in enumerate(calls)]

    def _unread(self) -> str:
        """Malformed tool-call blocks, given back as text (their errors are in the extension field)."""
        return "".join(c.text for c in self.answer.invalid_calls if c.text is not None) if self.answer else ""

    # ----- the stream ------------------------------------------------------------------------------------

    def start(self) -> list[dict[str, Any]]:
        if self.call.kind == "completion":
            return []
        return [self._envelope([self._choice("", chunk=True, role=True)], chunk=True)]

    def step(self, event: StepEvent) -> list[dict[str, Any]]:
        """Chunks for a step that is not the last."""
        self.last = event
        delta = self.reader.add(event.text)
        return [self._envelope([self._choice(delta, chunk=True)], chunk=True)] if delta else []

    def finish(self, event: StepEvent) -> list[dict[str, Any]]:
        """Chunks for the last step: the rest of the answer, tool calls, the finish reason with the speculative
        statistics, and usage when asked for."""
        self.last = event
        self.answer = self.reader.finish(event.text)
        chunks = []
        rest, calls = self.answer.delta + self._unread(), self._tool_calls(streamed=True)
        if rest or calls:
            chunks.append(self._envelope([self._choice(rest or None, chunk=True, tool_calls=calls)], chunk=True))
        final = self._envelope([self._choice(None, chunk=True, finish=self.finish_reason())], chunk=True)
        chunks.append({**final, "diffuspec": self._extension()})
        if self.call.include_usage:
            chunks.append({**self._envelope([], chunk=True), "usage": self.usage()})
        return chunks

    def response(self) -> dict[str, Any]:
        """The whole answer, once ``finish`` has run."""
        content = self.answer.content + self._unread()
        if self.call.kind == "chat" and not content and self.answer.calls:
            content = None  # as OpenAI answers a pure tool call
        choice = self._choice(content, chunk=False, tool_calls=self._tool_calls(streamed=False),
                              finish=self.finish_reason())
        return {**self._envelope([choice], chunk=False), "usage": self.usage(), "diffuspec": self._extension()}
