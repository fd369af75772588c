"""Each example runs offline on the embedded demo pair (a smoke test: it must finish and print an answer)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("script", ["langchain_rag.py", "langchain_agent.py", "llamaindex_query.py"])
def test_example_runs(script):
    env = {**os.environ, "DIFFUSPEC_EXAMPLE_TOKENS": "24", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()
    if script != "langchain_agent.py":
        assert "[step:" in done.stderr  # per-step statistics arrived while streaming
