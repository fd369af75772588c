"""Chat, RAG and tool-use conversations synthesised from what every machine has: the standard library's own
docstrings and signatures, and randomly generated tool schemas. No download, seeded, deterministic for a given
Python version.

Held-out material never enters training: a module is held out when ``crc32(name) % 5 == 0`` (its facts only
appear in evaluation RAG questions), a tool schema when ``crc32(verb + noun) % 5 == 0``, and the last two
phrasings of every request family are used only in evaluation.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import re
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

# The chat template shipped in the demo tokenizer. Tools are listed one per line in the shape of the call the
# model writes, {"name": "get_weather", "arguments": {"city": "string"}} Get the weather., so the name and the
# argument names are the same tokens in the listing and in the call (a byte-level BPE splits `- get_weather(`
# and `"get_weather"` differently) and writing a call is copying a line and filling in its values; compact
# because the demo models have a 512-token window. ``tool_choice`` (a tool name,
# or "required"/"any") may be passed to ``apply_chat_template`` to force a call. Assistant turns end with EOS;
# ``{% generation %}`` marks what the assistant writes (``return_assistant_tokens_mask=True``).
CHAT_TEMPLATE = (
    "{%- macro arg_type(p) -%}{{ p.enum | join('|') if p.enum is defined else p.type | default('any') }}{%- endmacro -%}"
    "{%- if tools -%}"
    "{{ '<|system|>\\nYou can call these tools:' }}"
    "{%- for tool in tools -%}"
    "{%- set f = tool.function if tool.function is defined else tool -%}"
    "{%- set props = f.parameters.properties if f.parameters is defined and f.parameters.properties is defined else {} -%}"
    "{{ '\\n{\"name\": ' + (f.name | tojson) + ', \"arguments\": {' }}"
    "{%- for name, p in props.items() -%}{{ (name | tojson) + ': ' + (arg_type(p) | tojson) + (', ' if not loop.last else '') }}{%- endfor -%}"
    "{{ '}} ' + (f.description | default('')) }}"
    "{%- endfor -%}"
    "{{ '\\nTo call a tool, answer <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>.' }}"
    "{%- if tool_choice is defined and tool_choice and tool_choice not in ('auto', 'none') -%}"
    "{{ '\\nYou must call a tool.' if tool_choice in ('required', 'any') else '\\nYou must call the ' + tool_choice + ' tool.' }}"
    "{%- endif -%}"
    "{{ '\\n' }}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}"
    "{{ '<|assistant|>\\n' }}{% generation %}{{ m.content or '' }}"
    "{%- for call in m.tool_calls or [] -%}"
    "{%- set c = call.function if call.function is defined else call -%}"
    "{{ '<tool_call>{\"name\": ' + (c.name | tojson) + ', \"arguments\": ' }}"
    "{{ c.arguments if c.arguments is string else c.arguments | tojson }}{{ '}</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|endoftext|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- elif m.role == 'tool' -%}"
    "{{ '<|tool|>' + (' ' + m.name if m.name is defined and m.name else '') + '\\n' + m.content + '\\n' }}"
    "{%- else -%}"
    "{{ '<|' + m.role + '|>\\n' + m.content + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

SKIPPED_MODULES = {  # side effects on import (a browser, a printout, a GUI) or no useful docs
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
    "xxsubtype", "xxlimited", "xxlimited_35", "msilib", "winreg", "winsound", "msvcrt", "nt", "sre_compile",
    "sre_constants", "sre_parse", "encodings", "test",
}
HELDOUT_EVERY = 5
MAX_SENTENCE = 160


@dataclass(frozen=True)
class Fact:
    """One documented object: ``json.dumps(obj, *, skipkeys=False, ...)`` and its first sentence."""

    module: str
    name: str  # qualified, e.g. "json.dumps"; a module's own fact has name == module
    signature: str  # "" for modules
    sentence: str
    source: str = ""  # a short pure-Python function's source, for "write a function" turns

    @property
    def call(self) -> str:
        return f"{self.name}{self.signature}"


def heldout(key: str) -> bool:
    return zlib.crc32(key.encode()) % HELDOUT_EVERY == 0


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, whitespace collapsed; "" when none fits."""
    if not doc:
        return ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    sentence = match.group(1) if match else paragraph
    ok = 20 <= len(sentence) <= MAX_SENTENCE and sentence[0].isupper() and "`" not in sentence
    return sentence if ok else ""


def _short_source(obj: Any) -> str:
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return ""
    lines = source.rstrip().splitlines()
    fits = 3 <= len(lines) <= 10 and len(source) <= 420 and not source.startswith((" ", "@"))
    return source.rstrip() if fits else ""


def stdlib_facts() -> list[Fact]:
    """Facts about the public functions and classes of every importable standard-library module, sorted."""
    facts = []
    for module_name in sorted(sys.stdlib_module_names):
        if module_name.startswith("_") or module_name in SKIPPED_MODULES:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = importlib.import_module(module_name)
            except Exception:  # platform-specific or broken optional modules
                continue
        if sentence := first_sentence(inspect.getdoc(module)):
            facts.append(Fact(module_name, module_name, "", sentence))
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            obj = getattr(module, attr, None)
            if attr.startswith("_") or getattr(obj, "__module__", None) != module_name:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                continue
            try:
                signature = str(inspect.signature(obj))
            except (TypeError, ValueError):
                continue
            if len(signature) > 60 or not (sentence := first_sentence(inspect.getdoc(obj))):
                continue
            source = _short_source(obj) if inspect.isfunction(obj) else ""
            facts.append(Fact(module_name, f"{module_name}.{attr}", signature, sentence, source))
    return facts


# ----- phrasings (the last two of each family are held out) ---------------------------------------------

SYSTEM_PROMPTS = ["", "You are a helpful assistant.", "You are a Python assistant.", "You write Python.",
                  "Answer briefly."]
ASK_FUNCTION = ["What does {name} do?", "What is {name} for?", "Explain {name}.", "Tell me about {name}.",
                "How do I use {name}?", "What does the function {name} do?", "Describe {name}.",
                "What is {name}?"]
ASK_MODULE = ["What is the {name} module for?", "What does the {name} module do?", "Tell me about {name}.",
              "Explain the {name} module.", "What is {name}?", "Describe the {name} module."]
ANSWER_FUNCTION = ["`{call}`: {sentence}", "{sentence} The signature is `{call}`.", "Use `{call}`. {sentence}",
                   "`{call}`. {sentence}"]
ANSWER_MODULE = ["The {name} module: {sentence}", "{sentence}", "`{name}`: {sentence}"]
ANSWER_RAG = ["According to the context, `{call}`: {sentence}", "`{call}`: {sentence}",
              "The documentation says: {sentence} (`{call}`)", "{sentence} See `{call}`."]
RAG_SYSTEM = ["Answer from the documentation below.\n\n{context}", "Use the following context to answer.\n{context}",
              "Context:\n{context}\n\nAnswer the question from the context.", "Answer from this context:\n{context}"]
RAG_USER = ["Context:\n{context}\n\nQuestion: {question}", "{context}\n\n{question}",
            "Documentation:\n{context}\n\nQuestion: {question}\nAnswer:"]
WRITE_FUNCTION = ["Write a function `{call}`: {sentence}", "Write a Python function {name} that does this: {sentence}",
                  "Implement `{call}`. {sentence}", "Write {name}. {sentence}", "Show me code for `{call}`."]
CODE_ANSWER = ["```python\n{source}\n```", "Here is `{name}`:\n```python\n{source}\n```"]
TOOL_REQUESTS = [
    "Use the {tool} tool with {args_and}.", "What is the {noun} for {values}?", "Please {verb} the {noun}: {values}.",
    "Call {tool} with {args_eq}.", "Please run {tool}: {args_colon}.",
    "What is the value of {tool}({args_pos})? Use the tool.", "Can you {verb} the {noun} for {values}?",
    "I need to {verb} the {noun}. {args_sentence}", "{verb_cap} the {noun}: {args_colon}.",
    "Use {tool} to {verb} the {noun} with {args_and}.", "Call the {tool} tool. {args_sentence}",
    "Invoke {tool} using {args_eq}.", "Run the {tool} function where {args_sentence_lower}",
]
TOOL_ANSWERS = ["The result is {result}.", "{tool} returned {result}.", "The {noun} is {result}.",
                "Done: {result}.", "It is {result}."]
STRUCTURED_REQUESTS = ["Extract the details: {args_sentence}", "Fill in the {tool} record: {args_colon}.",
                       "{args_sentence}", "Record this as {tool}: {args_and}.", "Structure this: {args_and}."]


def _phrasings(family: list[str], split: str) -> list[str]:
    return family[-2:] if split == "eval" else family[:-2]


# ----- random tool schemas ------------------------------------------------------------------------------

VERBS = ["get", "find", "search", "lookup", "fetch", "convert", "compute", "count", "check", "create", "send",
         "list", "translate", "schedule", "book", "calculate", "resize", "rename", "validate", "format", "add",
         "remove", "update", "track", "play", "order", "estimate", "measure", "summarize", "encode", "apply"]
NOUNS = ["weather", "price", "user", "file", "words", "city", "stock", "temperature", "distance", "email",
         "meeting", "flight", "hotel", "image", "song", "order", "invoice", "recipe", "movie", "book", "time",
         "currency", "population", "score", "message", "task", "note", "password", "color", "route", "function",
         "value", "balance", "ticket", "reminder", "report", "package", "account", "event", "forecast"]
ARG_NAMES = {
    "string": ["city", "name", "query", "text", "title", "language", "country", "unit", "email", "color", "path",
               "symbol", "word", "label", "category", "location", "topic", "currency", "destination", "author",
               "input", "key", "prefix", "format", "tag", "mode"],
    "integer": ["count", "year", "limit", "age", "days", "size", "quantity", "page", "number", "id", "hours",
                "n", "input", "width", "height", "top_k", "retries", "level"],
    "number": ["amount", "price", "temperature", "radius", "weight", "latitude", "longitude", "rate", "x", "y",
               "threshold", "value"],
    "boolean": ["verbose", "metric", "urgent", "public", "enabled", "recursive", "dry_run", "strict"],
}
WORDS = ["Paris", "London", "Tokyo", "Berlin", "Lima", "Oslo", "red", "blue", "green", "python", "rust", "cats",
         "jazz", "report", "summer", "invoice", "meters", "celsius", "euro", "dollar", "apple", "river", "hello",
         "alpha", "orbit", "garden", "Madrid", "Cairo", "Quito", "violet", "kiwi", "notes.txt", "data.csv"]
TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "a flag"}


@dataclass
class ToolCase:
    """A tool schema, a call of it, and how it was asked for."""

    schema: dict
    arguments: dict
    verb: str
    noun: str

    @property
    def name(self) -> str:
        return self.schema["function"]["name"]


def schema_heldout(schema: dict) -> bool:
    """Whether a schema made by ``random_tool`` is held out (its description is "Verb the noun.")."""
    verb, _, noun = schema["function"]["description"][:-1].lower().partition(" the ")
    return heldout(verb + noun)


def _tool_name(verb: str, noun: str, rng: random.Random) -> str:
    style = rng.randrange(4)
    return [f"{verb}_{noun}", f"{verb}{noun.capitalize()}", f"{noun}_{verb}", f"{verb}_{noun}_tool"][style]


def _fake_word(rng: random.Random) -> str:
    return "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 3)))


def _value(kind: str, rng: random.Random, enum: list[str] | None = None) -> Any:
    if enum:
        return rng.choice(enum)
    if kind == "integer":
        return rng.choice([rng.randint(0, 12), rng.randint(0, 999), rng.randint(1900, 2030)])
    if kind == "number":
        return round(rng.uniform(-50, 500), rng.choice([1, 2]))
    if kind == "boolean":
        return rng.random() < 0.5
    return rng.choice(WORDS) if rng.random() < 0.6 else _fake_word(rng)


def random_tool(rng: random.Random, split: str, n_args: int | None = None) -> ToolCase:
    """A random schema in OpenAI function format, held out or not by its (verb, noun), and random arguments."""
    while True:
        verb, noun = rng.choice(VERBS), rng.choice(NOUNS)
        if heldout(verb + noun) == (split == "eval"):
            break
    n_args = rng.choice([0, 1, 1, 2, 2, 2, 3]) if n_args is None else n_args
    properties, arguments = {}, {}
    while len(properties) < n_args:
        kind = rng.choice(["string", "string", "integer", "number", "boolean"])
        arg = rng.choice(ARG_NAMES[kind])
        if arg in properties:
            continue
        spec: dict[str, Any] = {"type": kind}
        if kind == "string" and rng.random() < 0.15:
            spec["enum"] = rng.sample(["low", "medium", "high", "fast", "slow", "metric", "imperial"], 3)
        spec["description"] = f"{TYPE_WORDS[kind]}: the {arg.replace('_', ' ')}"
        properties[arg] = spec
        arguments[arg] = _value(kind, rng, spec.get("enum"))
    schema = {"type": "function", "function": {
        "name": _tool_name(verb, noun, rng),
        "description": f"{verb.capitalize()} the {noun}.",
        "parameters": {"type": "object", "properties": properties, "required": list(properties)},
    }}
    return ToolCase(schema, arguments, verb, noun)


def _spoken(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def tool_request(case: ToolCase, template: str) -> str:
    args = case.arguments
    spoken = {k: _spoken(v) for k, v in args.items()}
    if not args:  # nothing to pass: every phrasing reduces to naming the tool
        template = template if "{args_pos}" in template else "Use the {tool} tool."
    sentence = " ".join(f"The {k.replace('_', ' ')} is {v}." for k, v in spoken.items())
    fields = {
        "tool": case.name, "verb": case.verb, "verb_cap": case.verb.capitalize(), "noun": case.noun,
        "args_and": " and ".join(f"{k} {v}" for k, v in spoken.items()),
        "args_eq": ", ".join(f"{k}={v}" for k, v in spoken.items()),
        "args_colon": ", ".join(f"{k} is {v}" for k, v in spoken.items()),
        "args_pos": ", ".join(json.dumps(v) if isinstance(v, str) else _spoken(v) for v in args.values()),
        "values": " and ".join(spoken.values()), "args_sentence": sentence,
        "args_sentence_lower": " ".join(f"{k} is {v}." for k, v in spoken.items()),
    }
    return template.format(**fields)


# ----- conversations ------------------------------------------------------------------------------------


@dataclass
class Conversation:
    """Messages (the last one the assistant's, the part that is learnt and evaluated), optional tools and
    ``tool_choice``, and what an evaluation checks: the context a RAG answer must reuse, the call expected."""

    kind: str  # chat | code | rag | tool | tool_answer | structured | task | json
    messages: list[dict]
    tools: list[dict] | None = None
    tool_choice: str | None = None
    context: str = ""
    expected_call: dict | None = None
    extra: dict = field(default_factory=dict)


def _with_system(rng: random.Random, messages: list[dict]) -> list[dict]:
    system = rng.choice(SYSTEM_PROMPTS)
    return ([{"role": "system", "content": system}] if system else []) + messages


def _assistant(content: str, calls: list[dict] | None = None) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [{"type": "function", "function": c} for c in calls]
    return message


def chat_turn(fact: Fact, rng: random.Random, split: str) -> Conversation:
    if fact.source and rng.random() < 0.5:
        ask = rng.choice(_phrasings(WRITE_FUNCTION, split)).format(call=fact.call, name=fact.name.split(".")[-1],
                                                                   sentence=fact.sentence)
        answer = rng.choice(CODE_ANSWER).format(source=fact.source, name=fact.name.split(".")[-1])
        return Conversation("code", _with_system(rng, [{"role": "user", "content": ask}, _assistant(answer)]))
    if fact.signature:
        ask, answer = rng.choice(_phrasings(ASK_FUNCTION, split)), rng.choice(ANSWER_FUNCTION)
    else:
        ask, answer = rng.choice(_phrasings(ASK_MODULE, split)), rng.choice(ANSWER_MODULE)
    fields = {"name": fact.name, "call": fact.call, "sentence": fact.sentence}
    messages = [{"role": "user", "content": ask.format(**fields)}, _assistant(answer.format(**fields))]
    return Conversation("chat", _with_system(rng, messages))


def rag_turn(facts: list[Fact], rng: random.Random, split: str) -> Conversation:
    """2-3 retrieved docstrings, one of them relevant, in a system or user message; the answer quotes it."""
    docs = rng.sample(facts, rng.randint(2, 3))
    relevant = rng.choice(docs)
    context = "\n\n".join(f"[{d.name}] {d.call if d.signature else d.name}: {d.sentence}" for d in docs)
    if relevant.signature:
        question = rng.choice(_phrasings(ASK_FUNCTION, split)).format(name=relevant.name)
        answer = rng.choice(ANSWER_RAG).format(call=relevant.call, sentence=relevant.sentence)
    else:
        question = rng.choice(_phrasings(ASK_MODULE, split)).format(name=relevant.name)
        answer = rng.choice(ANSWER_MODULE).format(name=relevant.name, sentence=relevant.sentence)
    if rng.random() < 0.5:
        messages = [{"role": "system", "content": rng.choice(RAG_SYSTEM).format(context=context)},
                    {"role": "user", "content": question}]
    else:
        messages = _with_system(rng, [{"role": "user", "content": rng.choice(RAG_USER).format(
            context=context, question=question)}])
    return Conversation("rag", messages + [_assistant(answer)], context=context)


def tool_turn(rng: random.Random, split: str) -> Conversation:
    """A request for one of 1-4 offered tools, the call, and (half the time) the tool's result and the answer
    that uses it. Sometimes ``tool_choice`` forces the call (the structured-output path)."""
    case = random_tool(rng, split)
    others = [random_tool(rng, split).schema for _ in range(rng.randint(0, 3))]
    tools = others + [case.schema]
    rng.shuffle(tools)
    call = {"name": case.name, "arguments": case.arguments}
    structured = rng.random() < 0.2
    family = STRUCTURED_REQUESTS if structured and case.arguments else TOOL_REQUESTS
    request = tool_request(case, rng.choice(_phrasings(family, split)))
    tool_choice = case.name if structured or rng.random() < 0.1 else None
    messages = _with_system(rng, [{"role": "user", "content": request}, _assistant("", [call])])
    if rng.random() < 0.5 and not structured:
        result = _value(rng.choice(["integer", "number", "string"]), rng)
        answer = rng.choice(TOOL_ANSWERS).format(result=result, tool=case.name, noun=case.noun)
        messages[-1]["tool_calls"][0]["id"] = "call_0"
        messages += [{"role": "tool", "name": case.name, "tool_call_id": "call_0", "content": str(result)},
                     _assistant(answer)]
        return Conversation("tool_answer", messages, tools, tool_choice, extra={"result": str(result)})
    kind = "structured" if structured else "tool"
    return Conversation(kind, messages, tools, tool_choice, expected_call=call)


def tools_but_chat_turn(fact: Fact, rng: random.Random, split: str) -> Conversation:
    """Tools are offered but the question needs none: a plain answer (agents ask these after a tool ran)."""
    turn = chat_turn(fact, rng, split)
    turn.tools = [random_tool(rng, split).schema for _ in range(rng.randint(1, 3))]
    return turn


# ----- invented facts: questions only the context can answer ------------------------------------------

# (statement, question, answer) about invented entities, so no model knows them beforehand: answering is reading
# the context. Fields: {name} a made-up proper name, {place} a made-up town, {person}, {org}, {n}, {year}, {price},
# {things}. The last two templates are held out for evaluation.
FACT_TEMPLATES = [
    ("The {name} bridge in {place} is {n} metres long.", "How long is the {name} bridge?",
     "The {name} bridge is {n} metres long."),
    ("{org} was founded by {person} in {year}.", "Who founded {org}?", "{org} was founded by {person}."),
    ("{org} was founded in {year} in {place}.", "When was {org} founded?", "{org} was founded in {year}."),
    ("The population of {place} is about {n} people.", "What is the population of {place}?",
     "About {n} people live in {place}."),
    ("A {name} lamp costs {price} euros at {org}.", "How much does a {name} lamp cost?",
     "A {name} lamp costs {price} euros."),
    ("{person} was born in {place} in {year}.", "Where was {person} born?", "{person} was born in {place}."),
    ("{name} soup is made with {things}.", "What is {name} soup made with?", "{name} soup is made with {things}."),
    ("The {name} river flows into Lake {place}.", "Where does the {name} river flow?",
     "The {name} river flows into Lake {place}."),
    ("The headquarters of {org} are in {place}.", "Where are the headquarters of {org}?",
     "The headquarters of {org} are in {place}."),
    ("{person} works as a {job} at {org}.", "What does {person} do?", "{person} works as a {job} at {org}."),
    ("The planet {name} has {small} moons.", "How many moons does {name} have?", "{name} has {small} moons."),
    ("The {name} festival takes place every {month} in {place}.", "When does the {name} festival take place?",
     "The {name} festival takes place every {month}."),
    ("Mount {name} is {n} metres high.", "How high is Mount {name}?", "Mount {name} is {n} metres high."),
    ("The {name} library opens at {hour} o'clock.", "When does the {name} library open?",
     "The {name} library opens at {hour} o'clock."),
    ("{person} wrote the novel {title}.", "Who wrote {title}?", "{title} was written by {person}."),
    ("The {name} train leaves {place} at {hour}:{minute}.", "When does the {name} train leave?",
     "The {name} train leaves {place} at {hour}:{minute}."),
]
JOBS = ["teacher", "engineer", "nurse", "pilot", "chef", "librarian", "designer", "farmer", "lawyer", "baker"]
THINGS = ["rice", "onions", "beans", "carrots", "lentils", "mint", "ginger", "lemon", "cheese", "potatoes",
          "tomatoes", "garlic", "pepper", "honey"]
MONTHS = ["January", "March", "April", "May", "June", "July", "August", "September", "October", "December"]
ORG_SUFFIXES = ["Labs", "Foods", "Motors", "Books", "Systems", "Bank", "Studio", "Press", "Games", "Energy"]
NOT_IN_CONTEXT = ["The context does not say.", "The context does not mention that.",
                  "I cannot find that in the context."]
ASK_FROM_CONTEXT = ["{question}", "Based on the text above, {question_lower}", "Question: {question}",
                    "{question} Answer from the context.", "Using the context, {question_lower}",
                    "According to the text, {question_lower}"]
CONTEXT_LAYOUTS = ["{facts}", "Context:\n{facts}", "Documents:\n{numbered}", "Here is some information.\n{facts}",
                   "{bullets}"]


def _fact_fields(rng: random.Random) -> dict[str, Any]:
    person = f"{_fake_word(rng).capitalize()} {_fake_word(rng).capitalize()}"
    return {
        "name": _fake_word(rng).capitalize(), "place": _fake_word(rng).capitalize(), "person": person,
        "org": f"{_fake_word(rng).capitalize()} {rng.choice(ORG_SUFFIXES)}", "n": rng.choice([
            rng.randint(20, 999), rng.randint(1000, 99000)]), "year": rng.randint(1820, 2024),
        "price": rng.choice([rng.randint(3, 250), round(rng.uniform(2, 90), 2)]), "small": rng.randint(0, 9),
        "things": ", ".join(rng.sample(THINGS, 2)) + " and " + rng.choice(THINGS), "job": rng.choice(JOBS),
        "month": rng.choice(MONTHS), "hour": rng.randint(6, 11), "minute": rng.choice(["05", "15", "30", "45"]),
        "title": f"The {_fake_word(rng).capitalize()} {rng.choice(['Garden', 'Winter', 'Road', 'House', 'Sea'])}",
    }


def fact_rag_turn(rng: random.Random, split: str) -> Conversation:
    """2-5 invented facts as a context (prose, numbered documents or bullets) and a question about one of them,
    answered by restating it; one question in ten is about something the context lacks."""
    templates = _phrasings(FACT_TEMPLATES, split)
    chosen = rng.sample(templates, rng.randint(2, min(5, len(templates))))
    facts = [(t, _fact_fields(rng)) for t in chosen]
    statements = [t[0].format(**f) for t, f in facts]
    missing = rng.random() < 0.1
    asked, fields = facts[0] if not missing else (rng.choice(templates), _fact_fields(rng))
    answer_style = rng.random()
    rng.shuffle(statements)
    context = rng.choice(CONTEXT_LAYOUTS).format(
        facts=" ".join(statements), numbered="\n".join(f"[{i + 1}] {s}" for i, s in enumerate(statements)),
        bullets="\n".join(f"- {s}" for s in statements))
    question = asked[1].format(**fields)
    answer = rng.choice(NOT_IN_CONTEXT) if missing else asked[2].format(**fields)
    if not missing and answer_style < 0.2:
        lower = answer.split(" ", 1)[0] in ("The", "A", "About")  # never lower-case a proper name
        answer = "According to the context, " + (answer[0].lower() + answer[1:] if lower else answer)
    ask = rng.choice(_phrasings(ASK_FROM_CONTEXT, split)).format(
        question=question, question_lower=question[0].lower() + question[1:])
    if rng.random() < 0.5:
        messages = [{"role": "system", "content": rng.choice(RAG_SYSTEM).format(context=context)},
                    {"role": "user", "content": ask}]
    else:
        messages = _with_system(rng, [{"role": "user", "content": f"{context}\n\n{ask}"}])
    return Conversation("rag", messages + [_assistant(answer)], context=context, extra={"answerable": not missing})


# ----- small instructions with checkable answers, and everyday chat -----------------------------------------

def task_turn(rng: random.Random, split: str) -> Conversation:
    """An instruction whose answer is computed: arithmetic, sorting, reversing, counting, upper case, extraction."""
    kind = rng.randrange(7)
    if kind == 0:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op, value = rng.choice([("+", a + b), ("-", a - b), ("*", a * b)])
        ask = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}."]).format(
            a=a, op=op, b=b)
        answer = f"{a} {op} {b} = {value}."
    elif kind == 1:
        numbers = rng.sample(range(100), rng.randint(3, 7))
        ask = f"Sort these numbers from smallest to largest: {', '.join(map(str, numbers))}"
        answer = ", ".join(map(str, sorted(numbers)))
    elif kind == 2:
        words = rng.sample(WORDS, rng.randint(3, 6))
        ask = f"Reverse the order of this list: {', '.join(words)}"
        answer = ", ".join(reversed(words))
    elif kind == 3:
        words = [rng.choice(WORDS + THINGS).lower() for _ in range(rng.randint(2, 9))]
        ask = f"How many words are in this sentence: \"{' '.join(words)}\"?"
        answer = f"It has {len(words)} words."
    elif kind == 4:
        text = " ".join(rng.choice(WORDS + THINGS).lower() for _ in range(rng.randint(1, 4)))
        ask = rng.choice(["Write this in capital letters: {t}", "Convert to upper case: {t}"]).format(t=text)
        answer = text.upper()
    elif kind == 5:
        user = _fake_word(rng)
        email = f"{user}@{_fake_word(rng)}.{rng.choice(['com', 'org', 'net'])}"
        ask = f"Extract the email address from this text: \"Please write to {email} before {rng.choice(MONTHS)}.\""
        answer = email
    else:
        items = rng.sample(THINGS, rng.randint(2, 4))
        ask = f"Make a bulleted list of these items: {', '.join(items)}."
        answer = "\n".join(f"- {item.capitalize()}" for item in items)
    return Conversation("task", _with_system(rng, [{"role": "user", "content": ask}, _assistant(answer)]))


CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
            "Canada": "Ottawa", "Egypt": "Cairo", "Peru": "Lima", "Norway": "Oslo", "Kenya": "Nairobi",
            "Brazil": "Brasilia", "Australia": "Canberra", "India": "New Delhi", "China": "Beijing",
            "Mexico": "Mexico City", "Sweden": "Stockholm", "Greece": "Athens", "Portugal": "Lisbon",
            "Poland": "Warsaw", "Ireland": "Dublin", "Argentina": "Buenos Aires", "Chile": "Santiago",
            "Turkey": "Ankara", "Russia": "Moscow", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Cuba": "Havana",
            "Austria": "Vienna", "Hungary": "Budapest", "Finland": "Helsinki"}
GREETINGS = [("Hello", "Hello! How can I help you today?"), ("Hi", "Hi! What can I do for you?"),
             ("How are you?", "I'm doing well, thank you. How can I help you?"),
             ("Good morning!", "Good morning! How can I help?"), ("Thanks!", "You're welcome!"),
             ("Who are you?", "I am a helpful assistant. Ask me anything."),
             ("hello", "Hello! How can I help you today?"), ("Thank you.", "You're welcome! Anything else?")]


def everyday_turn(rng: random.Random, split: str) -> Conversation:
    """A greeting, or a question of common knowledge answered in one sentence."""
    if rng.random() < 0.35:
        ask, answer = rng.choice(GREETINGS)
    else:
        country = rng.choice(sorted(CAPITALS))
        ask = rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?",
                          "Name the capital of {c}."]).format(c=country)
        answer = f"The capital of {country} is {CAPITALS[country]}."
    return Conversation("chat", _with_system(rng, [{"role": "user", "content": ask}, _assistant(answer)]))


# The instruction that asks for a JSON answer (OpenAI's response_format), as the engine words it.
JSON_ANSWER_LINE = "Answer with one JSON object and nothing else."
JSON_SCHEMA_LINE = "Answer with one JSON object and nothing else, following this JSON schema: {schema}"


def json_turn(rng: random.Random, split: str) -> Conversation:
    """A request for a record, with the JSON instruction (and usually the schema) in the system message; the
    answer is the JSON object alone."""
    case = random_tool(rng, split, n_args=rng.randint(1, 3))
    parameters = case.schema["function"]["parameters"]
    line = JSON_SCHEMA_LINE.format(schema=json.dumps(parameters)) if rng.random() < 0.8 else JSON_ANSWER_LINE
    request = tool_request(case, rng.choice(_phrasings(STRUCTURED_REQUESTS, split)))
    messages = [{"role": "system", "content": line}, {"role": "user", "content": request},
                _assistant(json.dumps(case.arguments))]
    return Conversation("json", messages, expected_call={"name": "json", "arguments": case.arguments})


MIXTURE = {"chat": 0.08, "rag": 0.12, "fact_rag": 0.25, "tool": 0.33, "tools_but_chat": 0.04, "task": 0.08,
           "everyday": 0.04, "json": 0.06}


def synthesize(facts: list[Fact], n: int, seed: int, split: str = "train") -> list[Conversation]:
    """``n`` conversations in the ``MIXTURE`` proportions; ``split="eval"`` uses only held-out modules,
    schemas, phrasings and fact templates."""
    pool = [f for f in facts if heldout(f.module) == (split == "eval")]
    rng = random.Random(seed)
    make = {
        "chat": lambda: chat_turn(rng.choice(pool), rng, split),
        "rag": lambda: rag_turn(pool, rng, split),
        "fact_rag": lambda: fact_rag_turn(rng, split),
        "tool": lambda: tool_turn(rng, split),
        "tools_but_chat": lambda: tools_but_chat_turn(rng.choice(pool), rng, split),
        "task": lambda: task_turn(rng, split),
        "everyday": lambda: everyday_turn(rng, split),
        "json": lambda: json_turn(rng, split),
    }
    kinds, weights = zip(*MIXTURE.items())
    return [make[rng.choices(kinds, weights)[0]]() for _ in range(n)]


def render(tokenizer, conversation: Conversation, *, prompt_only: bool = False, **kwargs) -> Any:
    """The conversation through the chat template. ``prompt_only``: everything before the last assistant
    message, with the generation prompt (what a wrapper sends)."""
    messages = conversation.messages[:-1] if prompt_only else conversation.messages
    extra = {"tool_choice": conversation.tool_choice} if conversation.tool_choice else {}
    return tokenizer.apply_chat_template(
        messages, tools=conversation.tools, add_generation_prompt=prompt_only, **extra, **kwargs
    )


# ----- open requests: prompts only, for drafters that learn the target's own answers ---------------------------

OPEN_REQUESTS = [
    "Write a short story about {thing}.", "Write a poem about {topic}.", "Explain {topic} to a beginner.",
    "What are the pros and cons of {topic}?", "Give me three tips for {activity}.",
    "Describe a typical day of {person}.", "Compare {topic} and {other}.", "Write an email to {person} about {thing}.",
    "Summarize this text in one sentence:\n{sentence}", "Translate into French: {sentence}",
    "What is {n} times {m}? Show your steps.", "Pretend you are {person} and introduce yourself.",
    "Write a product description for {thing}.", "List five facts about {topic}.",
    "Why is {topic} important?", "Write a blog post about {activity}.",
    "How would you explain {topic} to a child?", "Plan a weekend of {activity}.",
]
TOPICS = ["solar power", "remote work", "recycling", "electric cars", "the printing press", "vaccines", "volcanoes",
          "the internet", "photosynthesis", "public libraries", "city parks", "coffee", "chess", "the moon",
          "rainforests", "bicycles", "democracy", "music lessons", "online privacy", "trains", "honey bees",
          "3D printing", "the water cycle", "museums", "social media", "space travel", "sleep", "bread baking"]
ACTIVITIES = ["learning a language", "running a marathon", "saving money", "growing tomatoes", "moving to a new city",
              "studying for exams", "starting a small business", "hiking in the mountains", "cooking for friends",
              "learning to program", "taking better photos", "writing a novel", "camping", "painting"]
PEOPLE = ["a baker", "a ship captain", "a nurse", "a museum guide", "a software engineer", "a farmer", "a teacher",
          "a firefighter", "a librarian", "an astronaut", "a detective", "a chef", "a pilot", "a beekeeper"]


def open_requests(facts: list[Fact], n: int, seed: int, split: str = "train") -> list[Conversation]:
    """``n`` open requests (write, explain, compare, summarise, translate, plan...) as prompts without answers:
    a drafter learns what the target itself answers. ``split="eval"`` uses the held-out modules' sentences and
    its own seed."""
    pool = [f for f in facts if heldout(f.module) == (split == "eval")]
    rng = random.Random(seed + 7 * (split == "eval"))
    out = []
    for _ in range(n):
        topic, other = rng.sample(TOPICS, 2)
        ask = rng.choice(OPEN_REQUESTS).format(
            thing=rng.choice(THINGS), topic=topic, other=other, activity=rng.choice(ACTIVITIES),
            person=rng.choice(PEOPLE), sentence=rng.choice(pool).sentence, n=rng.randint(3, 99), m=rng.randint(3, 99))
        out.append(Conversation("open", [{"role": "user", "content": ask}, _assistant("")]))
    return out
