"""``diffuspec bench``: every method side by side in one process, interleaved, checked for losslessness.

Speedups are ratios of tokens/s measured in the same run on the same prompts. Each repeat visits the prompts
in order and, per prompt, runs every method (in an order rotated per prompt, so no method always runs first
after another's allocations); one warm-up pass is discarded.
"""

from __future__ import annotations

import json
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .engine import DiffuSpec
from .stats import PHASES, DecodingStats, repeated_ngram_share

LOSSLESS_NOTE = ("all methods are greedy and lossless: each output is checked against target-only AR decoding "
                 "(spiffy against dlm, the diffusion model's own sampler)")
# A method checked against another than AR greedy decoding: Spiffy must reproduce the DLM's own sampler.
REFERENCES = {"spiffy": "dlm", "dlm": "dlm"}


@dataclass
class MethodTotals:
    """One method's runs: tokens and wall time as the benchmark timed them, plus the engine's own statistics
    summed over its runs (none for transformers' generate)."""

    name: str
    new_tokens: int = 0
    wall_seconds: float = 0.0
    repeated_tokens: float = 0.0
    decoding: DecodingStats = field(default_factory=DecodingStats)
    draft_lengths_first_run: list[int] = field(default_factory=list)
    peak_memory_mb: float | None = None

    def add(self, tokens: list[int], wall: float, stats: DecodingStats | None) -> None:
        self.new_tokens += len(tokens)
        self.repeated_tokens += repeated_ngram_share(tokens) * len(tokens)
        self.wall_seconds += wall
        if stats is None:
            return
        self.decoding = self.decoding + stats
        if not self.draft_lengths_first_run:
            self.draft_lengths_first_run = list(stats.draft_lengths)

    def row(self, reference_tps: float) -> dict[str, Any]:
        tps = self.new_tokens / self.wall_seconds if self.wall_seconds else 0.0
        d = self.decoding
        engine_run = d.steps > 0
        timed = sum(d.seconds.values())
        return {
            "method": self.name,
            "tokens_per_second": tps,
            "speedup": tps / reference_tps if reference_tps else None,
            "mat": d.mean_accepted_tokens if engine_run else None,
            "tokens_per_target_forward": self.new_tokens / d.target_forwards if engine_run else None,
            "acceptance_rate": d.acceptance_rate if d.drafted_tokens else None,
            "time_share": {p: s / timed for p, s in d.seconds.items()} if engine_run and timed else None,
            "repetition": self.repeated_tokens / self.new_tokens if self.new_tokens else 0.0,
            "predicted_tokens_per_step": _mean_finite(d.predicted_tokens),
            "tokens_per_step": d.tokens_per_step if engine_run else None,
            "peak_memory_mb": self.peak_memory_mb,
            "new_tokens": self.new_tokens,
            "wall_seconds": self.wall_seconds,
        }


def _mean_finite(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v == v]  # NaN: no prediction that step
    return sum(finite) / len(finite) if finite else None


Runner = Callable[[list[int], int], tuple[list[int], DecodingStats | None]]


def engine_runner(engine: DiffuSpec, mode: str) -> Runner:
    def run(prompt_ids: list[int], max_new_tokens: int):
        out = engine.generate(prompt_ids, max_new_tokens, mode=mode)
        return out.token_ids, out.stats

    return run


def transformers_runner(engine: DiffuSpec, **generate_kwargs: Any) -> Runner:
    """transformers' own ``generate`` on the same target (assisted generation, prompt lookup)."""
    target = engine.target
    eos = sorted(engine.eos_token_ids)

    @torch.inference_mode()
    def run(prompt_ids: list[int], max_new_tokens: int):
        ids = torch.tensor([prompt_ids], device=engine.device)
        out = target.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
            eos_token_id=eos, pad_token_id=engine.tokenizer.pad_token_id, **generate_kwargs,
        )
        return out[0, len(prompt_ids) :].tolist(), None

    return run


def default_methods(engine: DiffuSpec, fixed_ks: Sequence[int] = (4, 8, 16)) -> dict[str, Runner]:
    """AR reference, classic speculative decoding (ours and transformers'), prompt lookup, DiffuSpec, ablations."""
    methods: dict[str, Runner] = {"ar": engine_runner(engine, "ar")}
    if "ar-drafter" in engine.modes:
        methods["ar-drafter"] = engine_runner(engine, "ar-drafter")
        if isinstance(engine.ar_drafter_model, torch.nn.Module):  # transformers needs the model itself
            methods["hf-assisted"] = transformers_runner(engine, assistant_model=engine.ar_drafter_model)
    methods["prompt-lookup"] = engine_runner(engine, "prompt-lookup")
    methods["hf-prompt-lookup"] = transformers_runner(engine, prompt_lookup_num_tokens=10)
    if "diffuspec" in engine.modes:
        methods["diffuspec"] = engine_runner(engine.with_config(cps=True, draft_length=None), "diffuspec")
        methods["diffuspec-adl"] = engine_runner(engine.with_config(length_policy="adl", draft_length=None), "diffuspec")
        methods["diffuspec-no-cps"] = engine_runner(engine.with_config(cps=False, draft_length=None), "diffuspec")
        # tree verification (tree.py): the cost policy sizing trees of up to 8 paths and 16 added nodes (the best
        # measured), the draft_paths sweep, and fixed trees
        methods["diffuspec-tree"] = engine_runner(
            engine.with_config(draft_paths=8, tree_branches=16, draft_length=None), "diffuspec")
        for paths in (2, 4):
            methods[f"diffuspec-paths-{paths}"] = engine_runner(
                engine.with_config(draft_paths=paths, tree_branches=None, draft_length=None), "diffuspec")
        for k in fixed_ks:
            methods[f"diffuspec-k{k}"] = engine_runner(engine.with_config(cps=True, draft_length=k), "diffuspec")
        for k, branches in ((8, 8), (16, 8), (16, 16)):  # M added nodes make at most M + 1 paths: no path limit
            methods[f"diffuspec-k{k}-tree{branches}"] = engine_runner(
                engine.with_config(draft_length=k, draft_paths=branches + 1, tree_branches=branches), "diffuspec")
        k = engine.config.k_max
        methods[f"diffuspec-no-cps-k{k}"] = engine_runner(engine.with_config(cps=False, draft_length=k), "diffuspec")
    return methods


def dflash_methods(engine: DiffuSpec, dflash_model: torch.nn.Module) -> dict[str, Runner]:
    """A DFlash drafter three ways: transformers' own loop (``hf-dflash``), the same drafter in our loop as DFlash
    runs it (its whole block's argmax, ``dflash``), and with CPS and the default cost-aware length policy on its
    block logits (``diffuspec-dflash``)."""
    from .adapters.dflash import DFlashDrafter

    drafter = DFlashDrafter(engine.target, dflash_model)
    ours = DiffuSpec(engine.target, drafter, engine.tokenizer, engine.config, cps_ngram=engine.cps_ngram)
    return {
        "hf-dflash": transformers_runner(engine, assistant_model=dflash_model, speculation_type="dflash"),
        "dflash": engine_runner(ours.with_config(cps=False, draft_length=drafter.max_draft), "diffuspec"),
        "diffuspec-dflash": engine_runner(
            ours.with_config(cps=True, draft_length=None, length_policy="cost", k_max=drafter.max_draft), "diffuspec"),
    }


def dlm_methods(engine: DiffuSpec) -> dict[str, Runner]:
    """The diffusion model decoded on its own, plain and with Spiffy (checked against plain)."""
    return {mode: engine_runner(engine, mode) for mode in ("dlm", "spiffy") if mode in engine.modes}


def run_benchmark(
    engine: DiffuSpec,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 128,
    repeats: int = 1,
    methods: dict[str, Runner] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    methods = methods or default_methods(engine)
    names = list(methods)
    prompt_ids = [engine.tokenizer(p)["input_ids"] for p in prompts]
    totals = {name: MethodTotals(name) for name in names}
    cuda = engine.device.type == "cuda"

    for name in names:  # warm-up: first calls pay for allocation and kernel selection
        methods[name](prompt_ids[0], min(16, max_new_tokens))
    references: dict[tuple[str, int], list[int]] = {}
    bar = tqdm(total=repeats * len(prompt_ids) * len(names), desc="bench", disable=not progress)
    for _ in range(repeats):
        for p, ids in enumerate(prompt_ids):
            order = names[p % len(names) :] + names[: p % len(names)]
            for name in order:
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                tokens, stats = methods[name](ids, max_new_tokens)
                if cuda:
                    torch.cuda.synchronize()
                wall = time.perf_counter() - start
                if cuda:
                    peak = torch.cuda.max_memory_allocated() / 2**20
                    totals[name].peak_memory_mb = max(totals[name].peak_memory_mb or 0.0, peak)
                totals[name].add(tokens, wall, stats)
                ref = REFERENCES.get(name, "ar")
                if ref not in methods:
                    continue
                reference = references.get((ref, p))
                if reference is None:
                    reference = tokens if name == ref else methods[ref](ids, max_new_tokens)[0]
                    references[(ref, p)] = reference
                if tokens != reference:
                    raise RuntimeError(
                        f"{name} is not lossless: its output on prompt {p} differs from {ref} greedy decoding "
                        f"at token {next(i for i, (a, b) in enumerate(zip(tokens + [-1], reference + [-1])) if a != b)}"
                    )
                bar.update()
    bar.close()
    base = "ar" if "ar" in totals else names[0]
    reference_tps = totals[base].new_tokens / totals[base].wall_seconds
    return {
        "machine": machine_description(engine),
        "settings": {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "repeats": repeats,
                     "engine_config": {k: repr(v) if not isinstance(v, (int, float, str, bool, type(None))) else v
                                       for k, v in engine.config.__dict__.items()},
                     "speedup_reference": base, "note": LOSSLESS_NOTE},
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "methods": [totals[name].row(reference_tps) for name in names],
        "traces": {name: {"accepted_lengths": t.decoding.accepted_lengths,
                          "draft_lengths_first_run": t.draft_lengths_first_run,
                          "per_position_acceptance": t.decoding.per_position_acceptance,
                          "accepted_ranks": t.decoding.accepted_ranks, "tree_sizes": t.decoding.tree_sizes}
                   for name, t in totals.items() if t.decoding.steps},
    }


def machine_description(engine: DiffuSpec) -> str:
    if engine.device.type == "cuda":
        return f"{torch.cuda.get_device_name(engine.device)}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def markdown_table(results: dict[str, Any]) -> str:
    def fmt(value, pattern="{:.2f}"):
        return "-" if value is None else pattern.format(value)

    base = results["settings"].get("speedup_reference", "ar")
    lines = [
        f"| method | tokens/s | speedup vs {base} | MAT | tokens / target forward | predicted / realised tokens per "
        "step | acceptance | draft / search / verify / other | repeated 4-grams | peak GPU MB |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in results["methods"]:
        share = row["time_share"]
        split = " / ".join(f"{share[p]:.0%}" for p in PHASES) if share else "-"
        predicted = row.get("predicted_tokens_per_step")
        per_step = f"{fmt(predicted)} / {fmt(row.get('tokens_per_step'))}" if predicted is not None else "-"
        lines.append(
            f"| {row['method']} | {row['tokens_per_second']:.1f} | {fmt(row['speedup'])}x | {fmt(row['mat'])} | "
            f"{fmt(row['tokens_per_target_forward'])} | {per_step} | {fmt(row['acceptance_rate'], '{:.0%}')} | "
            f"{split} | {fmt(row.get('repetition'), '{:.0%}')} | {fmt(row['peak_memory_mb'], '{:.0f}')} |"
        )
    s = results["settings"]
    lines.append("")
    lines.append(f"{results['machine']}; {s['prompts']} prompts x {s['max_new_tokens']} new tokens x "
                 f"{s['repeats']} repeats, greedy; {s['note']}.")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path, focus: str = "diffuspec") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["methods"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 7.5))
    ax = axes[0][0]
    ax.barh([r["method"] for r in rows][::-1], [r["speedup"] for r in rows][::-1], color="tab:blue")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_title("speedup over AR greedy (tokens/s ratio, same run)")
    traces = results["traces"]
    if focus in traces:
        t = traces[focus]
        ax = axes[0][1]
        ax.hist(t["accepted_lengths"], bins=range(0, max([*t["accepted_lengths"], 1]) + 2), color="tab:green")
        ax.set_title(f"{focus}: accepted draft tokens per step")
        ax = axes[1][0]
        ax.plot(t["draft_lengths_first_run"], marker=".", color="tab:orange")
        ax.set_title(f"{focus}: draft length k over one generation (length policy)")
        ax.set_xlabel("verification step")
    ax = axes[1][1]
    for name, t in traces.items():
        if name.startswith(("diffuspec", "ar-drafter")) and len(t["per_position_acceptance"]) > 1:
            ax.plot(range(1, len(t["per_position_acceptance"]) + 1), t["per_position_acceptance"], label=name)
    ax.set_title("per-position acceptance (given the position was drafted)")
    ax.set_xlabel("draft position")
    ax.legend(fontsize=7)
    trees = {name: t for name, t in traces.items() if "-tree" in name or "-paths-" in name}
    ax = axes[0][2]  # tree verification: which of the tree's paths carried the accepted branch, and tree sizes
    for name, t in trees.items():
        ranks = [r for r, a in zip(t["accepted_ranks"], t["accepted_lengths"]) if a]  # steps that accepted any
        ax.hist(ranks, bins=range(max(ranks, default=0) + 2), alpha=0.6, label=name, align="left")
    ax.set_title("accepted path rank (steps accepting a draft token)")
    ax.set_xlabel("rank of the tree's path (0: the draft path)")
    ax = axes[1][2]
    for name, t in trees.items():
        ax.hist(t["tree_sizes"], bins=30, alpha=0.6, label=name)
    ax.set_title("verified tokens per step (tree size)")
    for ax in (axes[0][2], axes[1][2]):
        if trees:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(results: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown_table(results))
    plot(results, out_dir / "bench.png")
