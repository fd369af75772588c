"""``diffuspec serve``: the arguments checked and the extras present, then one engine in this process
(``single.py``) or ``--replicas N`` engines on Ray Serve (``replicas.py``)."""

from __future__ import annotations

import argparse

from ..errors import DiffuSpecError


def check_arguments(args: argparse.Namespace) -> None:
    for name in ("max_running", "replicas", "max_request_bytes"):
        if getattr(args, name) < 1:
            raise DiffuSpecError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_waiting < 0 or args.shutdown_grace < 0 or args.replica_cpus <= 0:
        raise DiffuSpecError("--max-waiting and --shutdown-grace must be >= 0 and --replica-cpus > 0")
    if not 0 <= args.port < 65536:
        raise DiffuSpecError(f"--port must be in 0..65535, got {args.port}")


def serve(args: argparse.Namespace) -> None:
    check_arguments(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise DiffuSpecError(f"diffuspec serve needs the serve extra ({error.name} is missing): "
                             "pip install 'diffuspec[serve]'") from None
    if args.replicas > 1:
        from .replicas import serve_replicas

        serve_replicas(args)
    else:
        from .single import serve_one

        serve_one(args)
