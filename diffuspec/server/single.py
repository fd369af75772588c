"""One engine in this process behind uvicorn. SIGTERM or SIGINT: uvicorn stops accepting connections and the
engine, told at the same moment, gives its running requests ``--shutdown-grace`` seconds, then cancels the rest
(their streams end with an error event and ``[DONE]``); then the process exits."""

from __future__ import annotations

import argparse
import socket
import sys
import threading

import uvicorn

from ..errors import DiffuSpecError
from .options import engine_arguments, served_model_name

CUT_OFF_MARGIN = 10.0  # seconds uvicorn waits beyond the engine's grace before it drops connections


class DrainingServer(uvicorn.Server):
    """uvicorn's server that closes the engine's queue (with a grace period) when told to exit."""

    def __init__(self, config: uvicorn.Config, engine, grace_seconds: float) -> None:
        super().__init__(config)
        self.engine, self.grace_seconds = engine, grace_seconds

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:
            threading.Thread(target=self.engine.scheduler.close, args=(self.grace_seconds,), daemon=True).start()
        super().handle_exit(sig, frame)


def bound_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: a free one, read back with ``getsockname``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise DiffuSpecError(f"cannot listen on {host}:{port} ({error.strerror}): pick another --port") from None
    return listener


def serve_one(args: argparse.Namespace) -> None:
    from ..engine import DiffuSpec
    from .app import EngineBackend, create_app

    listener = bound_socket(args.host, args.port)  # before loading: a taken port fails at once
    engine = DiffuSpec.from_pretrained(**engine_arguments(args))
    name = served_model_name(args.served_model_name, args.target)
    app = create_app(EngineBackend(engine), name, max_request_bytes=args.max_request_bytes,
                     shutdown_grace=args.shutdown_grace)
    config = uvicorn.Config(app, log_level=args.log_level, lifespan="on",
                            timeout_graceful_shutdown=args.shutdown_grace + CUT_OFF_MARGIN)
    host, port = listener.getsockname()[:2]
    print(f"diffuspec: serving {name!r} on http://{host}:{port}/v1", file=sys.stderr, flush=True)
    DrainingServer(config, engine, args.shutdown_grace).run(sockets=[listener])
