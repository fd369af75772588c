"""The benchmark harness on tiny models: it runs every method, checks losslessness, reports per prompt category,
writes its reports (without matplotlib too), and ``diffuspec bench`` runs end to end; its prompt sets render as a
chat wrapper sends them. (No timing thresholds: speed is measured by `diffuspec bench`, never asserted.)"""

import json
import sys

import pytest

from diffuspec import DiffuSpec
from diffuspec.bench import GENERATE, GENERATE_AS_LOADED, core_methods, default_methods, engine_runner, run_benchmark, write_results
from diffuspec.bench_prompts import (CODE_REQUEST, BenchPrompt, chat_set, per_category, prompt_set, spec_bench,
                                     text_set)
from diffuspec.chat import format_chat
from diffuspec.cli import main

TEMPLATE = "{% for m in messages %}{{ m.role }}, {{ m.content }}. {% endfor %}assistant,"  # the character alphabet


@pytest.fixture(scope="module")
def engine(targets, drafter, tokenizer):
    return DiffuSpec(targets["llama"], drafter, tokenizer, ar_drafter=targets["qwen2"])


def test_bench_runs_every_method_and_writes_reports(tmp_path, engine):
    methods = default_methods(engine, fixed_ks=(4,))
    prompts = [BenchPrompt("code", text="abc def"), BenchPrompt("spec-bench/qa", text="the cat"),
               BenchPrompt("spec-bench/math", text="a b")]
    results = run_benchmark(engine, prompts, max_new_tokens=12, repeats=1, methods=methods, progress=False,
                            log=tmp_path / "runs.jsonl")
    rows = {r["method"]: r for r in results["methods"]}
    assert set(rows) == set(methods) >= {"ar", GENERATE, "ar-drafter", "hf-assisted", "hf-prompt-lookup",
                                          "diffuspec", "diffuspec-no-cps", "diffuspec-no-lookup", "diffuspec-adl",
                                          "diffuspec-k4", "diffuspec-tree"}
    assert rows["ar"]["speedup"] == pytest.approx(1.0) and rows[GENERATE]["speedup_vs_generate"] == pytest.approx(1.0)
    assert rows["ar"]["check"] == "reference" and rows["diffuspec"]["check"] == rows[GENERATE]["check"] == "= ar"
    assert rows["diffuspec"]["mat"] is not None and rows["hf-assisted"]["mat"] is None
    assert sum(rows["diffuspec"]["time_share"].values()) == pytest.approx(1.0)
    assert set(results["sets"]) == {"code", "spec-bench"}
    assert set(results["categories"]) == {"spec-bench/qa", "spec-bench/math"}
    assert results["settings"]["prompts_per_category"] == {"code": 1, "spec-bench/qa": 1, "spec-bench/math": 1}
    in_sets = sum(r["new_tokens"] for rows_ in results["sets"].values() for r in rows_ if r["method"] == "ar")
    assert in_sets == rows["ar"]["new_tokens"]  # every prompt counted once in its set
    assert not results["lossless_failures"]
    logged = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(logged) == len(results["runs"]) == 3 * len(methods)
    written = write_results(results, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["methods"]
    table = (tmp_path / "results.md").read_text()
    assert "| diffuspec | = ar |" in table and "**spec-bench**" in table and "spec-bench/qa" in table
    assert (tmp_path / "bench.png") in written and (tmp_path / "bench.png").stat().st_size > 10_000


def test_a_lossy_method_is_reported_and_the_run_finishes(engine, tokenizer):
    exact = engine_runner(engine, "ar")

    def wrong(ids, n):
        tokens, stats = exact(ids, n)
        return tokens[:-1] + [(tokens[-1] + 1) % len(tokenizer)], stats

    results = run_benchmark(engine, ["abc", "xyz"], max_new_tokens=8, methods={"ar": exact, "wrong": wrong},
                            progress=False)
    assert [(f["method"], f["prompt"], f["first_difference"]) for f in results["lossless_failures"]] == [
        ("wrong", 0, 7), ("wrong", 1, 7)]
    assert {r["method"]: r["check"] for r in results["methods"]} == {"ar": "reference", "wrong": "NOT LOSSLESS"}


def test_speed_only_rows_are_not_checked_but_compared(engine):
    """A row on another numeric path (llama.cpp) is reported with how often it agreed with ar, never a failure."""
    exact = engine_runner(engine, "ar")
    calls = iter(range(100))

    def other_path(ids, n):  # agrees with ar on the first prompt only (warm-up call included)
        tokens, _ = exact(ids, n)
        return (tokens if next(calls) < 2 else tokens[:1]), None

    results = run_benchmark(engine, ["abc", "xyz"], max_new_tokens=6,
                            methods={"ar": exact, "llamacpp-ar": other_path}, progress=False)
    row = {r["method"]: r for r in results["methods"]}["llamacpp-ar"]
    assert not results["lossless_failures"]
    assert (row["check"], row["same_as_ar"]) == ("speed only", "1/2")


def test_reports_are_written_without_matplotlib(tmp_path, engine, monkeypatch):
    results = run_benchmark(engine, ["abc"], max_new_tokens=4, methods={"ar": engine_runner(engine, "ar")},
                            progress=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails as when not installed
    assert write_results(results, tmp_path) == [tmp_path / "results.json", tmp_path / "results.md"]
    assert not (tmp_path / "bench.png").exists()


@pytest.fixture(scope="module")
def saved_target(tmp_path_factory, targets, tokenizer):
    folder = tmp_path_factory.mktemp("target")
    targets["llama"].save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "prompts.txt").write_text("def f(x):\nthe cat\n")
    return folder


def test_the_bench_command_runs_end_to_end_without_matplotlib(saved_target, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "out"
    argv = ["bench", "--target", str(saved_target), "--prompts", str(saved_target / "prompts.txt"), "--methods",
            "prompt-lookup", GENERATE, "--max-new-tokens", "6", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert 'pip install "diffuspec[plots]"' in captured.out and "| prompt-lookup | = ar |" in captured.out
    assert "[6/6] prompts #1" in captured.err  # a progress line per prompt and method
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["methods"]] == ["ar", "prompt-lookup", GENERATE]  # the reference first
    assert results["settings"]["arguments"]["target"] == str(saved_target)
    assert len((out / "runs.jsonl").read_text().splitlines()) == 6


def test_a_prepared_target_is_timed_beside_generate_on_the_target_as_loaded(saved_target, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["bench", "--target", str(saved_target), "--prompts", str(saved_target / "prompts.txt"), "--precision",
            "float32", "--methods", GENERATE_AS_LOADED, "--max-new-tokens", "6", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert {r["method"]: r["check"] for r in results["methods"]} == {GENERATE_AS_LOADED: "speed only"}
    assert results["settings"]["precision"] == "float32"


def test_bench_options_are_checked_before_loading(tmp_path, capsys):
    assert main(["bench", "--per-category", "0"]) == 2
    assert "--per-category must be a positive integer" in capsys.readouterr().err
    assert main(["bench", "--spec-bench", str(tmp_path / "missing.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "other.jsonl").write_text('{"prompt": "x"}\n')
    assert main(["bench", "--spec-bench", str(tmp_path / "other.jsonl")]) == 2
    assert "not a Spec-Bench question file" in capsys.readouterr().err


# ----- the prompt sets ------------------------------------------------------------------------------------------


def test_spec_bench_first_turns_by_category_and_a_balanced_subset(tmp_path):
    rows = [("writing", "w1"), ("qa", "q1"), ("writing", "w2"), ("qa", "q2"), ("writing", "w3"), ("rag", "r1")]
    path = tmp_path / "question.jsonl"
    path.write_text("".join(json.dumps({"question_id": i, "category": c, "turns": [t, "second turn"]}) + "\n"
                            for i, (c, t) in enumerate(rows)))
    prompts = spec_bench(path)
    assert [(p.category, p.messages[0]["content"]) for p in prompts] == [(f"spec-bench/{c}", t) for c, t in rows]
    assert all(p.messages == ({"role": "user", "content": p.messages[0]["content"]},) for p in prompts)
    chosen = per_category(prompts, 2)
    assert [p.messages[0]["content"] for p in chosen] == ["w1", "q1", "w2", "q2", "r1"]


def test_conversations_render_as_a_chat_wrapper_sends_them(tokenizer):
    conversation = chat_set()[0]
    assert conversation.category.startswith("chat/")
    messages = list(conversation.messages)
    tokenizer.chat_template = None  # without a template: the documented fallback format
    assert conversation.token_ids(tokenizer) == format_chat(tokenizer, messages)
    tokenizer.chat_template = TEMPLATE
    try:
        assert conversation.token_ids(tokenizer) == format_chat(tokenizer, messages)
        assert tokenizer.decode(conversation.token_ids(tokenizer)).endswith(". assistant,")
    finally:
        tokenizer.chat_template = None


def test_shipped_sets_have_their_categories():
    chats = chat_set()
    kinds = {p.category for p in chats}
    assert kinds == {"chat/chat", "chat/rag", "chat/tool", "chat/tool_answer", "chat/task", "chat/json"}
    assert any(p.tools for p in chats) and all(p.messages[-1]["role"] in ("user", "tool") for p in chats)
    code, short = prompt_set("code"), prompt_set("short")
    assert [p.text for p in code] == [p.text for p in short] and {p.category for p in code} == {"code"}
    assert code[0].request == CODE_REQUEST and short[0].request is None
    assert len(prompt_set("heldout")) == 64


def test_code_starts_are_requests_for_chat_targets_and_texts_for_the_rest(tokenizer):
    code, = text_set(["def f(x):"], "code", CODE_REQUEST)
    assert code.token_ids(tokenizer) == tokenizer("def f(x):")["input_ids"]
    tokenizer.chat_template = TEMPLATE
    try:
        request = [{"role": "user", "content": CODE_REQUEST.format(text="def f(x):")}]
        assert code.token_ids(tokenizer) == format_chat(tokenizer, request)
        plain, = text_set(["def f(x):"], "prompts")
        assert plain.token_ids(tokenizer) == tokenizer("def f(x):")["input_ids"]
    finally:
        tokenizer.chat_template = None


def test_prompts_too_long_for_the_context_are_left_out(engine):
    long = "abc " * (engine.context_window // 4)
    results = run_benchmark(engine, ["abc", long], max_new_tokens=4, methods=core_methods(engine), progress=False)
    assert (results["settings"]["prompts"], results["settings"]["skipped_prompts"]) == (1, 1)


@pytest.mark.slow
def test_the_bench_on_gemma_with_llama_cpp_beside_it(tmp_path):
    """The real target (Gemma 3 270M, its base preset) and llama.cpp on the very GGUF file it was converted from:
    our rows checked against ar, llama.cpp's measured for speed only."""
    pytest.importorskip("llama_cpp")
    questions = tmp_path / "question.jsonl"
    questions.write_text("".join(json.dumps({"category": c, "turns": [t]}) + "\n" for c, t in
                                 [("qa", "What is the capital of Peru?"), ("writing", "Write a haiku about rain.")]))
    out = tmp_path / "out"
    assert main(["bench", "--target", "gemma-3-270m-base", "--spec-bench", str(questions), "--prompt-set", "chat",
                 "--per-category", "1", "--limit", "3", "--max-new-tokens", "12", "--methods", "prompt-lookup",
                 "llamacpp-ar", "llamacpp-prompt-lookup", "--llamacpp", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    checks = {r["method"]: r["check"] for r in results["methods"]}
    assert checks == {"ar": "reference", "prompt-lookup": "= ar", "llamacpp-ar": "speed only",
                      "llamacpp-prompt-lookup": "speed only"}
    assert set(results["categories"]) == {"spec-bench/qa", "spec-bench/writing", "chat/chat"}
