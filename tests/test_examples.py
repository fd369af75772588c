"""Each example runs offline on the embedded demo pair, streams with per-step figures and reports the
repeated 4-gram share of its answers beside MAT. Whether those answers are ones a person would accept (no
degenerate repetition; the agent really calls a tool and answers with its result) is checked too: the shipped
target is still the code-only build, which fails that, so the check is a strict expected failure that will
flag the day a rebuilt pair passes it (README, "The embedded demo pair")."""

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
SCRIPTS = ["langchain_rag.py", "langchain_agent.py", "llamaindex_query.py"]
MAX_REPEATED_SHARE = 0.5  # of an answer's tokens inside 4-grams it already wrote


@functools.cache
def run_example(script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DIFFUSPEC_EXAMPLE_TOKENS": "64", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def repeated_shares(stdout: str) -> list[float]:
    return [int(s) / 100 for s in re.findall(r"repeated 4-gram share (\d+)%", stdout)]


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_and_reports_repetition_beside_mat(script):
    done = run_example(script)
    assert done.stdout.strip() and repeated_shares(done.stdout) and "MAT" in done.stdout
    if script == "langchain_agent.py":
        assert re.search(r"\d+ tool call\(s\) executed", done.stdout)
    else:
        assert "[step:" in done.stderr  # per-step statistics arrived while streaming


@pytest.mark.xfail(strict=True, reason="the shipped demo target is the code-only build (issue 16)")
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_answers_are_acceptable(script):
    done = run_example(script)
    assert max(repeated_shares(done.stdout)) < MAX_REPEATED_SHARE, done.stdout
    if script == "langchain_agent.py":  # the model called the tool, the agent ran it, the answer used it
        assert int(re.search(r"(\d+) tool call\(s\) executed", done.stdout).group(1)) >= 1, done.stdout
        assert "tool get_weather -> rain, 9 C" in done.stdout and "9 C" in done.stdout.split("rain, 9 C", 1)[1]
