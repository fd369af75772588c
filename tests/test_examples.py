"""The examples run offline, stream with per-step figures and report the repeated 4-gram share of their answers
beside MAT: quickly on the tiny preset (the plumbing), and on the default model (slow), where the answers must be
ones a person accepts: grounded in the retrieved passage, the agent calling a tool and answering with its result."""

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
MAX_REPEATED_SHARE = 0.5  # of an answer's tokens inside 4-grams it already wrote


@functools.cache
def run_example(script: str, model: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DIFFUSPEC_EXAMPLE_TOKENS": "24" if model == "tiny" else "96"}
    env.pop("DIFFUSPEC_EXAMPLE_MODEL", None)
    if model is not None:
        env["DIFFUSPEC_EXAMPLE_MODEL"] = model
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, env=env,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def repeated_shares(stdout: str) -> list[float]:
    return [int(s) / 100 for s in re.findall(r"repeated 4-gram share (\d+)%", stdout)]


@pytest.mark.parametrize("script", ["langchain_rag.py", "langchain_agent.py"])
def test_example_runs_and_reports_repetition_beside_mat_on_the_tiny_preset(script):
    done = run_example(script, "tiny")
    assert done.stdout.strip() and repeated_shares(done.stdout) and "MAT" in done.stdout
    if script == "langchain_agent.py":
        assert re.search(r"\d+ tool call\(s\) executed", done.stdout)
    else:
        assert "[step:" in done.stderr  # per-step statistics arrived while streaming


@pytest.mark.slow
@pytest.mark.parametrize("script", ["langchain_rag.py", "llamaindex_query.py"])
def test_retrieval_examples_answer_from_the_retrieved_passage(script):
    done = run_example(script, None)
    assert "[step:" in done.stderr and max(repeated_shares(done.stdout)) < MAX_REPEATED_SHARE, done.stdout
    answers = re.findall(r"^A: (.*)$", done.stdout, re.M)
    for answer, fact in zip(answers, ("27", "finance", "17:30")):
        assert fact in answer, done.stdout


@pytest.mark.slow
def test_the_agent_calls_tools_and_answers_with_their_results():
    done = run_example("langchain_agent.py", None)
    assert int(re.search(r"(\d+) tool call\(s\) executed", done.stdout).group(1)) >= 2, done.stdout
    assert "tool get_weather -> rain, 9 C" in done.stdout and "9" in done.stdout.split("rain, 9 C", 1)[1]
    assert "129.60 USD" in done.stdout.split("tool convert_currency ->", 1)[1], done.stdout
    assert max(repeated_shares(done.stdout)) < MAX_REPEATED_SHARE
