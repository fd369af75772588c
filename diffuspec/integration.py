"""What the framework wrappers (LangChain, LlamaIndex) share: checking their arguments, and turning the Hugging
Face spellings users bring into what ``shared_engine`` / ``DiffuSpec.from_pretrained`` take.

Nothing here loads a model or imports torch, so building a wrapper stays cheap and fails early on bad input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

from .config import DiffuSpecConfig
from .errors import DiffuSpecError
from .load_arguments import LOAD_ALIASES, LOAD_ARGUMENT_NAMES, checked_choice
from .params import GenerationParams

# per-call overrides; max_tokens and stop_sequences as OpenAI/LangChain and Hugging Face/Anthropic spell them
CALL_ARGUMENTS = (*GenerationParams.names(), "max_tokens", "stop_sequences")
ANSWER_TOKENS = 256  # the default answer length: at most this, and at most a quarter of the context window


def default_answer_tokens(context_window: int) -> int:
    """The answer length when a wrapper's or a server request's caller gives none: ``ANSWER_TOKENS``, or a
    quarter of a smaller window (room for the prompt, which frameworks such as LlamaIndex pack up to the window
    less the answer)."""
    return max(1, min(ANSWER_TOKENS, context_window // 4))


def refuse_unknown(owner: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """A clear error for argument names ``owner`` does not take (a silently ignored knob is a bug)."""
    valid = sorted(set(valid))
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise DiffuSpecError(f"{owner} got unknown argument(s) {', '.join(unknown)}: valid ones are {', '.join(valid)}")


def check_model_arguments(model: type, given: Mapping[str, Any], extra: Iterable[str] = ()) -> None:
    """For a pydantic model's constructor: refuse unknown names (``extra``: names its ``__init__`` takes
    itself), and one field given under two of its names, of which pydantic would silently keep one."""
    spellings = []
    for name, field in model.model_fields.items():
        aliases = getattr(field.validation_alias, "choices", [field.validation_alias])  # AliasChoices or one
        spellings.append({n for n in (name, field.alias, *aliases) if isinstance(n, str)})
    refuse_unknown(model.__name__, given, set(extra).union(*spellings))
    for names in spellings:
        if len(twice := names & set(given)) > 1:
            raise DiffuSpecError(f"{model.__name__} got {' and '.join(sorted(twice))}: they are one argument, pass one")


def call_params(
    owner: str, base: GenerationParams, overrides: Mapping[str, Any], stop: Iterable[str] | None = None
) -> GenerationParams:
    """``base`` with a call's ``overrides`` (unknown names refused, values checked by GenerationParams);
    stop strings of the base, the ``stop`` argument and the overrides all apply."""
    refuse_unknown(f"{owner} call", overrides, CALL_ARGUMENTS)
    given = {*overrides, *(["stop"] if stop is not None else [])}
    for one, other in (("max_tokens", "max_new_tokens"), ("stop", "stop_sequences")):
        if one in given and other in given:
            raise DiffuSpecError(f"{one} and {other} are one argument: pass one")
    changes = {("max_new_tokens" if k == "max_tokens" else k): v for k, v in overrides.items()
               if k not in ("stop", "stop_sequences")}
    call_stop = overrides.get("stop", overrides.get("stop_sequences"))
    return GenerationParams.of(base, **changes).merged_stop(stop).merged_stop(call_stop)


def load_arguments(model_kwargs: Mapping[str, Any] | None = None, **explicit: Any) -> dict[str, Any]:
    """``from_pretrained``'s loading arguments from a wrapper's ``model_kwargs`` and its own fields
    (``explicit``, None = not given). Keys from_pretrained does not take, and one key given twice with
    different values, are refused."""
    merged = {}
    for key, value in (model_kwargs or {}).items():
        key = LOAD_ALIASES.get(key, key)
        if key not in LOAD_ARGUMENT_NAMES:
            raise DiffuSpecError(
                f"model_kwargs[{key!r}] is not supported: DiffuSpec.from_pretrained loads with "
                f"{', '.join(LOAD_ARGUMENT_NAMES)}. For anything else load the models yourself and pass "
                "engine=DiffuSpec(target, drafter, tokenizer)"
            )
        merged[key] = checked_choice(key, value)
    for key, value in explicit.items():
        if value is None:
            continue
        if key in merged and merged[key] != value:
            raise DiffuSpecError(
                f"{key} is given twice ({key}={value!r} and model_kwargs[{key!r}]={merged[key]!r}): pass it once"
            )
        merged[key] = checked_choice(key, value)
    return merged


def engine_config(changes: Mapping[str, Any] | None) -> DiffuSpecConfig:
    """A ``DiffuSpecConfig`` from a wrapper's ``engine_config`` dict, unknown knobs refused."""
    refuse_unknown("engine_config", changes or {}, [f.name for f in fields(DiffuSpecConfig)])
    return DiffuSpecConfig(**(changes or {}))


def display_name(model_name: str | None, target: str | None, engine: Any) -> str:
    """The model name a wrapper reports: the given one, else the target (a preset's name or a path), else the
    engine's, else the default preset's name."""
    from . import presets

    if model_name or target:
        return model_name or target
    if engine is not None:
        return getattr(engine.target, "name_or_path", "") or "diffuspec"
    return presets.DEFAULT_PRESET


def engine_arguments(
    *,
    engine: Any,
    target: str | None,
    drafter: str | None,
    ar_drafter: str | None,
    model_name: str | None,
    model_kwargs: Mapping[str, Any] | None,
    config: Mapping[str, Any] | None,
    **load: Any,
) -> dict[str, Any]:
    """Check which engine a wrapper's arguments ask for and return ``shared_engine``'s keyword arguments
    (empty when ``engine`` is given). ``model_name`` is a display name: without a target or an engine it
    would label the demo pair with another model's name, so it is refused."""
    if engine is not None:
        given = {"target": target, "drafter": drafter, "ar_drafter": ar_drafter, "model_kwargs": model_kwargs,
                 "engine_config": config, **load}
        clashing = [name for name, value in given.items() if value]
        if clashing:
            raise DiffuSpecError(
                f"engine= already holds loaded models, so {', '.join(clashing)} would be ignored: "
                "pass either engine=... or the model arguments"
            )
        return {}
    if model_name is not None and target is None:
        raise DiffuSpecError(
            f"model={model_name!r} only names the model in traces and metadata: to load it pass "
            f"target={model_name!r} (or model_id=...) with a drafter, or engine=...; with neither, the "
            "embedded demo pair runs and needs no model name"
        )
    if target is None and (drafter is not None or ar_drafter is not None):
        raise DiffuSpecError("a drafter was given without a target: pass target=... (or model_id=...) too")
    return {
        "target": target,
        "drafter": drafter,
        "ar_drafter": ar_drafter,
        "config": engine_config(config),
        **load_arguments(model_kwargs, **load),
    }
