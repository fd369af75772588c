"""Documentation snippets of standard-library functions, one per function: ``[json.loads] json.loads(s): ...``
(the first sentence of the docstring). The retrieval examples search these; nothing is downloaded."""

import importlib
import inspect
import re


def first_sentence(doc: str | None) -> str:
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    return match.group(1) if match else paragraph


def snippets(modules: list[str]) -> list[tuple[str, str]]:
    """(qualified name, snippet) for the module itself and each public function or class with a docstring."""
    out = []
    for name in modules:
        module = importlib.import_module(name)
        out.append((name, f"[{name}] {name}: {first_sentence(inspect.getdoc(module))}"))
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            obj = getattr(module, attr)
            if attr.startswith("_") or not callable(obj) or getattr(obj, "__module__", None) != name:
                continue
            try:
                signature = str(inspect.signature(obj))
            except (TypeError, ValueError):
                signature = "(...)"
            sentence = first_sentence(inspect.getdoc(obj))
            if sentence and len(signature) <= 60:
                out.append((f"{name}.{attr}", f"[{name}.{attr}] {name}.{attr}{signature}: {sentence}"))
    return out
