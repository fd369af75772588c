"""The arguments a model pair is loaded with, listed once: ``DiffuSpec.from_pretrained`` and ``shared_engine``
accept exactly these, the framework wrappers' fields and the command line's options are made from this list,
and ``loading.load_models`` takes them (a test keeps the two in step). No torch import here."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import DiffuSpecError


@dataclass(frozen=True)
class LoadArgument:
    name: str
    annotation: Any  # the type of the wrappers' field
    help: str
    switch: bool = False  # on the command line, a flag without a value
    choices: tuple[str, ...] | None = None  # on the command line, the values it takes


LOAD_ARGUMENTS: tuple[LoadArgument, ...] = (
    LoadArgument("tuning", str | None, "a folder written by `diffuspec tune-target`, applied to the target"),
    LoadArgument("gguf_file", str | None, "the GGUF file to load when the target is a folder holding several"),
    LoadArgument("device", str | None, "where the models run: 'cpu', 'cuda', 'cuda:N' or 'mps' (default: CUDA when "
                 "this machine has it)"),
    LoadArgument("dtype", Any, "the weights' dtype: 'float32', 'bfloat16', 'float16' or 'auto' (a torch.dtype from "
                 "Python; default: as transformers loads them)"),
    LoadArgument("device_map", str | dict[str, Any] | None, "accelerate's device map, e.g. 'auto', instead of a "
                 "device (a dict from Python)"),
    LoadArgument("precision", str | None, "the target's kernels on a CPU: 'auto' (default: the preset's "
                 "recommendation, else as loaded), 'none' (as loaded), 'float32' (packed float32 linears) or 'int8' "
                 "(a row-exact int8 model; speculative decoding reproduces its own greedy output)",
                 choices=("auto", "none", "float32", "int8")),
    LoadArgument("trust_remote_code", bool | None, "run model code that ships in the model's repository",
                 switch=True),
)
LOAD_ARGUMENT_NAMES = tuple(argument.name for argument in LOAD_ARGUMENTS)
_CHOICES = {argument.name: argument.choices for argument in LOAD_ARGUMENTS if argument.choices}
LOAD_ALIASES = {"torch_dtype": "dtype"}  # transformers' older spelling


def checked_load_arguments(owner: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` with aliases spelt the current way; a name that is not a loading argument is refused."""
    checked: dict[str, Any] = {}
    for given_name, value in given.items():
        name = LOAD_ALIASES.get(given_name, given_name)
        if name not in LOAD_ARGUMENT_NAMES:
            raise DiffuSpecError(f"{owner} got unknown loading argument {given_name!r}: the models load with "
                                 f"{', '.join(LOAD_ARGUMENT_NAMES)}")
        if name in checked:
            spellings = " and ".join(sorted(k for k in given if LOAD_ALIASES.get(k, k) == name))
            raise DiffuSpecError(f"{owner} got {spellings}: they are one argument, pass one")
        checked[name] = checked_choice(name, value)
    return checked


def checked_choice(name: str, value: Any) -> Any:
    """``value`` of the loading argument ``name``, refused now (before anything loads) where the argument takes
    only some values and this is none of them (None: not given)."""
    choices = _CHOICES.get(name)
    if choices and value is not None and value not in choices:
        raise DiffuSpecError(f"unknown {name} {value!r}: use one of {', '.join(map(repr, choices))}")
    return value


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype``, ... on a command that loads models."""
    for argument in LOAD_ARGUMENTS:
        option = "--" + argument.name.replace("_", "-")
        if argument.switch:
            parser.add_argument(option, action="store_true", default=None, help=argument.help)
        else:
            parser.add_argument(option, help=argument.help, choices=argument.choices)


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The loading arguments a command line gave (those left out are not passed)."""
    return {name: getattr(args, name) for name in LOAD_ARGUMENT_NAMES if getattr(args, name, None) is not None}
