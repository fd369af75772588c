"""The prompt sets of ``diffuspec bench``, each prompt with its category, rendered for the target at hand.

A prompt is a conversation (Spec-Bench's first turns, the chat / RAG / tool conversations shipped in
``bench_data/chat.jsonl``) or a text to continue (code, corpus windows, a user's prompt file). Conversations reach
the target as the chat wrappers send them (its chat template, or the fallback chat format of ``chat.py`` when it
has none); code starts are asked of a target with a chat template as a request to continue the code, and every
other text is continued as it is.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .chat import forced_call_prefix, format_chat
from .config import DiffuSpecError

BENCH_DATA = Path(__file__).parent / "bench_data"
CHAT_FILE = BENCH_DATA / "chat.jsonl"
CODE_REQUEST = "Continue this Python code:\n\n{text}"  # how a chat target is asked for a code completion


@dataclass(frozen=True)
class BenchPrompt:
    """One benchmark prompt: a conversation (``messages``, optional ``tools`` and ``tool_choice``: what a chat
    wrapper sends) or a ``text`` to continue. ``request`` wraps ``text`` as a user message for a chat target
    (``"{text}"`` in it); without one the text is continued as it is by every target."""

    category: str
    messages: tuple[dict, ...] = ()
    text: str | None = None
    tools: tuple[dict, ...] = ()
    tool_choice: str | None = None
    request: str | None = None

    def token_ids(self, tokenizer) -> list[int]:
        """The prompt as the target reads it: a conversation as a chat wrapper sends it (``chat.format_chat``:
        the chat template, or the documented fallback format without one; a forced tool call opened), a text as
        it is, or as a request for a chat target."""
        chat = bool(getattr(tokenizer, "chat_template", None))
        if self.text is not None and not (chat and self.request):
            return tokenizer(self.text)["input_ids"]
        messages = ([{"role": "user", "content": self.request.format(text=self.text)}] if self.text is not None
                    else list(self.messages))
        tools = list(self.tools) or None
        choice = self.tool_choice if tools else None
        return format_chat(tokenizer, messages, tools, choice, answer_prefix=forced_call_prefix(choice))


def spec_bench(path: str | Path) -> list[BenchPrompt]:
    """Spec-Bench's questions (question.jsonl): the first turn of each, as a user message, by category."""
    prompts = []
    for row in _json_lines(path, "Spec-Bench question file"):
        try:
            prompts.append(BenchPrompt(f"spec-bench/{row['category']}",
                                       ({"role": "user", "content": row["turns"][0]},)))
        except (KeyError, IndexError, TypeError):
            raise DiffuSpecError(f"{path} is not a Spec-Bench question file: each line needs a \"category\" and "
                                 "\"turns\" (its data/spec_bench/question.jsonl)") from None
    return prompts


def chat_set(path: str | Path = CHAT_FILE) -> list[BenchPrompt]:
    """The shipped conversations (chat, RAG, tool calls and tool results, tasks, JSON answers), by kind."""
    return [BenchPrompt(f"chat/{row['kind']}", tuple(row["messages"]), tools=tuple(row.get("tools") or ()),
                        tool_choice=row.get("tool_choice"))
            for row in _json_lines(path, "chat prompt file")]


def text_set(texts: Iterable[str], category: str, request: str | None = None) -> list[BenchPrompt]:
    """Texts to continue (``request``: how a chat target is asked to, see ``BenchPrompt``)."""
    return [BenchPrompt(category, text=text, request=request) for text in texts]


def per_category(prompts: Sequence[BenchPrompt], n: int) -> list[BenchPrompt]:
    """The first ``n`` prompts of every category, in their order: a balanced subset."""
    seen: Counter[str] = Counter()
    chosen = []
    for prompt in prompts:
        seen[prompt.category] += 1
        if seen[prompt.category] <= n:
            chosen.append(prompt)
    return chosen


def _json_lines(path: str | Path, what: str) -> list[dict]:
    source = Path(path)
    if not source.is_file():
        raise DiffuSpecError(f"{what} {path} not found: pass an existing JSON lines file")
    rows = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DiffuSpecError(f"{what} {path}, line {number}: not JSON ({error.msg})") from None
    if not rows:
        raise DiffuSpecError(f"{what} {path} holds no prompt")
    return rows


PROMPT_SETS = ("heldout", "short", "code", "chat")


def prompt_set(name: str) -> list[BenchPrompt]:
    """A named set shipped with the package: ``heldout`` (held-out corpus windows, continued as text), ``short``
    (one-line Python starts, continued as text), ``code`` (the same starts, asked of a chat target as a request to
    continue the code) and ``chat`` (``chat_set``)."""
    from .loading import EMBEDDED_DIR

    if name == "chat":
        return chat_set()
    if name not in PROMPT_SETS:
        raise DiffuSpecError(f"unknown prompt set {name!r}: choose from {', '.join(PROMPT_SETS)}")
    file = EMBEDDED_DIR / ("prompts.jsonl" if name == "heldout" else "short_prompts.jsonl")
    texts = [row["prompt"] for row in _json_lines(file, f"the {name} prompt file")]
    return text_set(texts, name, CODE_REQUEST if name == "code" else None)
