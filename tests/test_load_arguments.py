"""The loading arguments are listed once; everything that loads models takes exactly that list."""

import argparse
import inspect

import pytest

from diffuspec import DiffuSpec
from diffuspec.errors import DiffuSpecError
from diffuspec.load_arguments import LOAD_ARGUMENT_NAMES, add_load_options, checked_load_arguments, load_options
from diffuspec.loading import load_models

MODEL_SELECTION = {"target", "drafter", "ar_drafter", "verbose"}  # load_models' other parameters


def test_load_models_takes_exactly_the_listed_arguments():
    taken = set(inspect.signature(load_models).parameters) - MODEL_SELECTION
    assert taken == set(LOAD_ARGUMENT_NAMES), "add the new argument to diffuspec/load_arguments.py"


def test_unknown_and_doubled_loading_arguments_are_refused():
    assert checked_load_arguments("x", {"torch_dtype": "float32"}) == {"dtype": "float32"}
    with pytest.raises(DiffuSpecError, match="unknown loading argument 'attn_implementation'.*device"):
        DiffuSpec.from_pretrained("tiny", attn_implementation="sdpa")
    with pytest.raises(DiffuSpecError, match="dtype and torch_dtype: they are one argument"):
        checked_load_arguments("x", {"dtype": "float32", "torch_dtype": "float32"})


def test_command_line_options_come_from_the_list():
    parser = argparse.ArgumentParser()
    add_load_options(parser)
    args = parser.parse_args(["--device", "cpu", "--trust-remote-code"])
    assert load_options(args) == {"device": "cpu", "trust_remote_code": True}
    assert set(vars(parser.parse_args([]))) == set(LOAD_ARGUMENT_NAMES)


def test_precision_option_takes_its_choices_only(capsys):
    parser = argparse.ArgumentParser()
    add_load_options(parser)
    assert load_options(parser.parse_args(["--precision", "int8"])) == {"precision": "int8"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "int4"])
    assert "invalid choice" in capsys.readouterr().err


def test_a_value_outside_an_arguments_choices_is_refused_before_loading():
    from diffuspec.integration import load_arguments

    for check in (lambda: checked_load_arguments("from_pretrained", {"precision": "int4"}),
                  lambda: load_arguments({"precision": "int4"}), lambda: load_arguments(None, precision="int4")):
        with pytest.raises(DiffuSpecError, match="unknown precision 'int4': use one of 'auto', 'none', 'float32', 'int8'"):
            check()
    assert checked_load_arguments("from_pretrained", {"precision": "int8"}) == {"precision": "int8"}
