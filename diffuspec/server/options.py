"""The command-line options of ``diffuspec serve`` and ``diffuspec bench-serve`` (no heavy imports: the
parser is built for every ``diffuspec`` command)."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import MODES, DiffuSpecConfig
from ..load_arguments import add_load_options, load_options

DEFAULT_PORT = 8000


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", help="hub id, path, GGUF file or preset name of the AR target (default: the "
                        "default model; 'tiny' is the 6M demo pair)")
    parser.add_argument("--drafter", help="hub id or path of the diffusion drafter")
    parser.add_argument("--ar-drafter", help="hub id or path of an AR draft model (mode ar-drafter)")
    parser.add_argument("--mode", choices=MODES, help="the engine's decoding mode (default: diffuspec)")
    add_load_options(parser)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port (printed at start)")
    parser.add_argument("--served-model-name", help="the model name clients send and /v1/models lists (default: the preset's name, "
                        "e.g. gemma-3-270m or tiny, else the model folder's or file's name, else the hub id)")
    parser.add_argument("--max-running", type=int, default=1,
                        help="requests decoded at once per engine, a step each in turn")
    parser.add_argument("--max-waiting", type=int, default=256,
                        help="requests queued per engine beyond those; more are answered 503")
    parser.add_argument("--max-request-bytes", type=int, default=8 * 2**20)
    parser.add_argument("--shutdown-grace", type=float, default=5.0,
                        help="seconds running requests get to finish after SIGTERM/SIGINT")
    parser.add_argument("--replicas", type=int, default=1,
                        help="engine replicas; more than 1 runs them on Ray Serve (the ray extra)")
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica (Ray)")
    parser.add_argument("--replica-gpus", type=float,
                        help="GPUs per replica (Ray; default: 1 when this machine has CUDA, else 0)")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def add_bench_serve_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--url", help="bench a server already running there (e.g. http://127.0.0.1:8000) instead "
                        "of starting one per --replicas value")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2],
                        help="server set-ups to measure: 1 is one process, N > 1 N Ray Serve replicas")
    parser.add_argument("--replica-cpus", type=float, default=1.0)
    parser.add_argument("--max-running", type=int, default=1)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients to measure")
    parser.add_argument("--requests", type=int, default=32, help="requests per client count")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompts", help="prompt file (text or JSON lines; default: the demo pair's chat prompts)")
    parser.add_argument("--out", default="bench-results/serve")


def served_model_name(given: str | None, target: str | None) -> str:
    """The name the server answers to: ``given``, else the preset's name (the default preset's without a
    target), else a local model's folder name (a file's name less its suffix, e.g. a GGUF), else the hub id."""
    import os
    from pathlib import Path

    from .. import presets

    if given:
        return given
    if target is None or target in presets.PRESETS:
        return target or presets.DEFAULT_PRESET
    path = Path(os.path.expanduser(target))
    if path.exists():
        path = path.resolve()
        return (path.stem if path.is_file() else path.name) or target
    return target


def engine_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``DiffuSpec.from_pretrained``'s arguments from ``diffuspec serve``'s options."""
    config = DiffuSpecConfig(mode=args.mode) if args.mode else None
    return dict(target=args.target, drafter=args.drafter, ar_drafter=args.ar_drafter, config=config,
                max_running=args.max_running, max_waiting=args.max_waiting, **load_options(args))
