"""The shipped chat templates (diffuspec/chat_templates): Gemma's turn format with tools, rendered through
transformers' own apply_chat_template, read back by the engine's tool-call parser."""

import json

import pytest
from transformers import AutoTokenizer

from diffuspec.chat import format_chat, parse_tool_calls
from diffuspec.loading import embedded_paths
from diffuspec.tuning import template_text

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["C", "F"]}}}}}
NO_ARGS = {"type": "function", "function": {"name": "now", "description": "The time.", "parameters": {}}}


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(embedded_paths()["target"])
    tokenizer.chat_template = template_text("gemma_tools")
    return tokenizer


def render(tokenizer, messages, **kwargs):
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_system_prompt_and_tools_open_the_first_user_turn(tokenizer):
    text = render(tokenizer, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                  tools=[WEATHER, NO_ARGS], add_generation_prompt=True)
    assert text == (
        f"{tokenizer.bos_token or ''}<start_of_turn>user\nBe brief.\n\nYou can call these tools:\n"
        '{"name": "get_weather", "arguments": {"city": "string", "unit": "C|F"}} Get the weather.\n'
        '{"name": "now", "arguments": {}} The time.\n'
        'To call a tool, answer <tool_call>{"name": ..., "arguments": {...}}</tool_call>.\n\n'
        "Hi<end_of_turn>\n<start_of_turn>model\n")


def test_calls_and_results_round_trip_and_results_share_one_turn(tokenizer):
    call = {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}
    messages = [
        {"role": "user", "content": "Weather in Oslo and Lima?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call},
                                                            {"type": "function", "function": {**call, "arguments": {"city": "Lima"}}}]},
        {"role": "tool", "name": "get_weather", "content": "3 C"},
        {"role": "tool", "name": "get_weather", "content": "19 C"},
        {"role": "assistant", "content": "Oslo 3 C, Lima 19 C."},
    ]
    text = render(tokenizer, messages, tools=[WEATHER])
    model_turn = text.split("<start_of_turn>model\n")[1].split("<end_of_turn>")[0]
    content, calls = parse_tool_calls(model_turn)
    assert content == "" and [(c["name"], c["args"], c["error"]) for c in calls] == [
        ("get_weather", {"city": "Oslo", "unit": "C"}, None), ("get_weather", {"city": "Lima"}, None)]
    assert ("<start_of_turn>user\n<tool_response>\n3 C\n</tool_response>\n<tool_response>\n19 C\n"
            "</tool_response><end_of_turn>\n<start_of_turn>model\nOslo 3 C, Lima 19 C.<end_of_turn>\n") in text


def test_tool_choice_forces_a_call_in_words_and_in_the_opened_answer(tokenizer):
    ids = format_chat(tokenizer, [{"role": "user", "content": "Oslo"}], [WEATHER], "get_weather",
                      answer_prefix='<tool_call>{"name": "get_weather", "arguments": ')
    text = tokenizer.decode(ids)
    assert "You must call the get_weather tool.\n\nOslo<end_of_turn>" in text
    assert text.endswith('<start_of_turn>model\n<tool_call>{"name": "get_weather", "arguments": ')


def test_the_learnt_part_is_exactly_the_models_answers(tokenizer):
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    learnt = tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert learnt == "4<end_of_turn>6<end_of_turn>"


def test_json_arguments_given_as_text_are_written_as_they_are(tokenizer):
    arguments = json.dumps({"city": "Oslo"})
    messages = [{"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [{"function": {"name": "get_weather", "arguments": arguments}}]}]
    assert f'<tool_call>{{"name": "get_weather", "arguments": {arguments}}}</tool_call>' in render(tokenizer, messages)
