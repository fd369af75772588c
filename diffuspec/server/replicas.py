"""``diffuspec serve --replicas N``: N engine replicas on Ray Serve behind one OpenAI-compatible endpoint.

Ray does the distributing: each ``EngineReplica`` actor holds one engine (``--replica-cpus`` CPUs and
``--replica-gpus`` GPUs reserved), and one ``Router`` replica serves the same FastAPI app as a single process
(``app.create_app``), its backend streaming each request from a replica that Ray's router picks (the least
loaded of two). Tokenizing, chat formatting and the metrics happen in the router, so ``/metrics`` counts every
replica's requests; the engine's own queue bounds each replica (``--max-running`` + ``--max-waiting``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

from ..errors import DiffuSpecError
from ..events import StepEvent
from ..params import GenerationParams
from .options import engine_arguments, served_model_name
from .protocol import APIError

try:
    import ray
    from ray import serve
    from ray.serve.exceptions import BackPressureError
except ImportError:  # checked by serve_replicas, which says how to install it
    ray = serve = None


def _deployments():
    """The two deployment classes (defined once Ray is importable)."""

    @serve.deployment
    class EngineReplica:
        def __init__(self, arguments: dict[str, Any], threads: int) -> None:
            import torch

            from ..engine import DiffuSpec

            torch.set_num_threads(threads)
            self.engine = DiffuSpec.from_pretrained(**arguments)
            self.name = f"{os.uname().nodename}:{os.getpid()}"

        def facts(self) -> dict[str, Any]:
            e = self.engine
            return {"tokenizer": e.tokenizer, "context_window": e.context_window, "vocab_size": e.vocab_size}

        async def generate(self, prompt_ids: list[int], params: GenerationParams) -> AsyncIterator[tuple[str, Any]]:
            request = self.engine.submit(prompt_ids, params=params, loop=asyncio.get_running_loop())
            try:
                async for event in request:
                    yield self.name, event, request.queue_seconds
            finally:
                request.cancel()  # the router cancelled (its client left): free the slot now

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress()
    class Router:
        async def __init__(self, replicas: Any, model_name: str, settings: dict[str, Any]) -> None:
            facts = await replicas.facts.remote()
            self.backend = ReplicaBackend(replicas, facts)
            self.model_name, self.settings = model_name, settings

        def __serve_build_asgi_app__(self):
            from .app import create_app

            return create_app(self.backend, self.model_name, **self.settings)

    return EngineReplica, Router


class ReplicaHandle:
    """One request streamed from a replica (an ``app.Handle``)."""

    def __init__(self, response: Any) -> None:
        self.response, self.replica, self.queue_seconds = response, None, None

    async def __aiter__(self) -> AsyncIterator[StepEvent]:
        try:
            async for replica, event, queue_seconds in self.response:
                self.replica, self.queue_seconds = replica, queue_seconds
                yield event
        except BackPressureError as error:
            raise APIError(503, f"every replica is busy: {error}", code="overloaded", kind="server_error") from None
        except ray.exceptions.RayTaskError as error:
            cause = error.cause if isinstance(error.cause, Exception) else error
            raise APIError(500, f"generation failed on a replica: {cause}", kind="server_error") from None

    def cancel(self) -> None:
        self.response.cancel()


class ReplicaBackend:
    """The replicas as the app's ``Backend``."""

    def __init__(self, replicas: Any, facts: dict[str, Any]) -> None:
        self.replicas = replicas.options(stream=True)
        self.tokenizer, self.context_window, self.vocab_size = facts["tokenizer"], facts["context_window"], facts["vocab_size"]

    def submit(self, prompt_ids: list[int], params: GenerationParams) -> ReplicaHandle:
        return ReplicaHandle(self.replicas.generate.remote(prompt_ids, params))

    async def close(self, grace_seconds: float) -> None:
        """Ray Serve drains the replicas itself (graceful_shutdown_timeout_s) when it shuts down."""


def replica_gpus(args: argparse.Namespace) -> float:
    if args.replica_gpus is not None:
        return args.replica_gpus
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


def serve_replicas(args: argparse.Namespace) -> None:
    if ray is None:
        raise DiffuSpecError("--replicas needs Ray Serve: pip install 'diffuspec[ray]'")
    gpus = replica_gpus(args)
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=args.log_level in ("info", "debug"))
    try:
        have = ray.cluster_resources()
        need = {"CPU": args.replicas * args.replica_cpus, "GPU": args.replicas * gpus}
        short = [f"{need[k]:g} {k}s" for k in need if need[k] > have.get(k, 0)]
        if short:
            raise DiffuSpecError(
                f"{args.replicas} replicas need {' and '.join(short)} but Ray sees {have.get('CPU', 0):g} CPUs and "
                f"{have.get('GPU', 0):g} GPUs: lower --replicas, --replica-cpus or --replica-gpus")
        EngineReplica, Router = _deployments()
        settings = {"max_request_bytes": args.max_request_bytes, "shutdown_grace": args.shutdown_grace}
        replicas = EngineReplica.options(
            num_replicas=args.replicas,
            ray_actor_options={"num_cpus": args.replica_cpus, "num_gpus": gpus},
            max_ongoing_requests=args.max_running + args.max_waiting,
            graceful_shutdown_timeout_s=args.shutdown_grace,
        ).bind(engine_arguments(args), max(1, int(args.replica_cpus)))
        app = Router.options(graceful_shutdown_timeout_s=args.shutdown_grace).bind(
            replicas, served_model_name(args.served_model_name, args.target), settings)
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name="diffuspec", route_prefix="/", blocking=False)
        print(f"diffuspec: serving on http://{args.host}:{args.port}/v1 with {args.replicas} Ray Serve replicas",
              file=sys.stderr, flush=True)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
    finally:
        if serve is not None:
            serve.shutdown()
        ray.shutdown()
