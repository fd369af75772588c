"""The verification cost curve of a target, as loaded and as ``prepare_target`` prepares it.

Each curve is timed through the engine's own calibration (``loop.calibrate_verification``: cached passes of
1, 2, 3, 5, 9, 17 and 33 tokens at the end of a prompt, rolled back after each), the precisions interleaved
round by round so that a busy machine slows them alike; medians are reported, with each curve's ratio to its
own one-token pass::

    python -m diffuspec.verification_curve /path/to/target --precisions none,float32,int8 \
        --threads 2 --rounds 5 --plot docs/verification-curve.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from .caches import new_cache, rollback
from .length import CostCurve, MachineCosts
from .loop import CALIBRATION_SIZES, _verify, calibrate_verification
from .precision import PRECISIONS, prepare_target


class RecordedCurve(CostCurve):
    """A cost curve that also keeps every raw observation (the engine's curve keeps an EMA only)."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: dict[int, list[float]] = {}

    def observe(self, size: int, seconds: float) -> None:
        super().observe(size, seconds)
        self.samples.setdefault(size, []).append(seconds)


def measure_curves(targets: dict[str, PreTrainedModel], context: int = 100, largest: int = 33, rounds: int = 5,
                   clock: Callable[[], float] = time.perf_counter, seed: int = 0) -> dict[str, dict[int, list[float]]]:
    """Seconds of every timed pass, by target name and tokens verified, after a ``context``-token prefill of
    the same random ids for every target; one calibration per target per round, targets interleaved."""
    vocab = min(t.get_output_embeddings().weight.shape[0] for t in targets.values())
    ids = torch.randint(0, vocab, (context + 1,), generator=torch.Generator().manual_seed(seed))
    curves = {name: RecordedCurve() for name in targets}
    with torch.inference_mode():
        caches = {}
        for name, target in targets.items():
            caches[name] = new_cache(target)
            _verify(target, caches[name], ids[:context])
            rollback(caches[name], 0)
        for _ in range(rounds):
            for name, target in targets.items():
                costs = MachineCosts(curves[name], {}, {}, CostCurve())
                calibrate_verification(target, caches[name], ids[context:], costs, clock, largest, repeats=1)
    return {name: curve.samples for name, curve in curves.items()}


def medians(samples: dict[str, dict[int, list[float]]]) -> dict[str, dict[int, float]]:
    return {name: {size: statistics.median(times) for size, times in sorted(by_size.items())}
            for name, by_size in samples.items()}


def format_table(curves: dict[str, dict[int, float]]) -> str:
    """Milliseconds per pass and the ratio to the same target's one-token pass, one row per target."""
    sizes = sorted({size for curve in curves.values() for size in curve})
    width = max(len(name) for name in curves) + 8
    lines = [f"{'tokens verified':<{width}}" + "".join(f"{size:>8}" for size in sizes)]
    for name, curve in curves.items():
        lines.append(f"{name + ' ms':<{width}}" + "".join(f"{1000 * curve[size]:>8.1f}" for size in sizes))
        lines.append(f"{name + ' / 1 tok':<{width}}" + "".join(f"{curve[size] / curve[sizes[0]]:>8.2f}"
                                                               for size in sizes))
    return "\n".join(lines)


def plot(curves: dict[str, dict[int, float]], path: Path, title: str) -> None:
    """Milliseconds per pass against tokens verified, one line per target, saved as an image."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plotting needs matplotlib: pip install 'diffuspec[plots]'") from None
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for name, curve in curves.items():
        sizes = sorted(curve)
        axis.plot(sizes, [1000 * curve[s] for s in sizes], marker="o", label="as loaded" if name == "none" else name)
    axis.set_xlabel("tokens verified in one pass")
    axis.set_ylabel("ms per pass (median)")
    axis.set_title(title)
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffuspec.verification_curve", description=__doc__.split("\n")[0])
    parser.add_argument("target", help="a float32 causal LM directory (or hub id)")
    parser.add_argument("--precisions", default="none,float32,int8",
                        help=f"comma-separated: none (as loaded) or any of {', '.join(PRECISIONS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--context", type=int, default=100, help="tokens in the cache before each timed pass")
    parser.add_argument("--largest", type=int, default=max(CALIBRATION_SIZES))
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the thread's CPU seconds, not wall seconds (needs --threads 1): steadier on a "
                             "machine others are using, blind to time spent waiting for a core")
    parser.add_argument("--plot", type=Path, default=None, help="save the curves as an image here")
    parser.add_argument("--json", type=Path, default=None, help="save every timed pass here")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.precisions.split(",") if name.strip()]
    unknown = [name for name in names if name != "none" and name not in PRECISIONS]
    if unknown:
        parser.error(f"unknown precision(s) {', '.join(unknown)}: use none or {', '.join(PRECISIONS)}")
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time counts one thread's CPU seconds: pass --threads 1 with it")
    if args.threads:
        torch.set_num_threads(args.threads)
    targets = {name: prepare_target(AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval(),
                                    None if name == "none" else name) for name in names}
    clock = time.thread_time if args.cpu_time else time.perf_counter
    samples = measure_curves(targets, args.context, args.largest, args.rounds, clock)
    curves = medians(samples)
    print(f"{args.target}: {torch.get_num_threads()} threads, context {args.context}, {args.rounds} rounds, "
          f"{'CPU' if args.cpu_time else 'wall'} time (medians)")
    print(format_table(curves))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({name: {str(k): v for k, v in by.items()} for name, by in samples.items()}))
    if args.plot:
        kind = next(iter(targets.values())).config.model_type
        plot(curves, args.plot, f"{kind}: one cached pass after {args.context} tokens, "
                                f"{torch.get_num_threads()} threads")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
