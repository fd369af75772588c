"""The benchmark harness on tiny models: it runs every method, checks losslessness, writes its reports.
(No timing thresholds: speed is measured by `diffuspec bench`, never asserted.)"""

import json

import pytest

from diffuspec import DiffuSpec
from diffuspec.bench import default_methods, engine_runner, run_benchmark, write_results


def test_bench_runs_every_method_and_writes_reports(tmp_path, targets, drafter, tokenizer):
    engine = DiffuSpec(targets["llama"], drafter, tokenizer, ar_drafter=targets["qwen2"])
    methods = default_methods(engine, fixed_ks=(4,))
    results = run_benchmark(engine, ["abc def", "the cat"], max_new_tokens=12, repeats=1, methods=methods,
                            progress=False)
    rows = {r["method"]: r for r in results["methods"]}
    assert set(rows) == set(methods) >= {"ar", "ar-drafter", "hf-assisted", "hf-prompt-lookup", "diffuspec",
                                          "diffuspec-no-cps", "diffuspec-k4"}
    assert rows["ar"]["speedup"] == pytest.approx(1.0)
    assert rows["diffuspec"]["mat"] is not None and rows["hf-assisted"]["mat"] is None
    assert sum(rows["diffuspec"]["time_share"].values()) == pytest.approx(1.0)
    write_results(results, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["methods"]
    assert "| diffuspec |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "bench.png").stat().st_size > 10_000


def test_bench_fails_loudly_on_a_lossy_method(targets, drafter, tokenizer):
    engine = DiffuSpec(targets["llama"], drafter, tokenizer)
    lossy = engine_runner(engine, "ar")

    def wrong(ids, n):
        tokens, stats = lossy(ids, n)
        return tokens[:-1] + [(tokens[-1] + 1) % len(tokenizer)], stats

    with pytest.raises(RuntimeError, match="not lossless"):
        run_benchmark(engine, ["abc"], max_new_tokens=8, repeats=1, methods={"ar": lossy, "wrong": wrong},
                      progress=False)
