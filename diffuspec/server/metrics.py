"""Prometheus metrics of the server, named as vLLM names its own under a ``diffuspec:`` prefix (so dashboards
and alerts written for vLLM's speculative decoding carry over): request latencies, token counts, and the
drafts, draft tokens and accepted tokens (overall and per draft position) of every verification step."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..events import StepEvent

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """One registry per server (several servers can live in one process, as in tests)."""

    def __init__(self, model_name: str) -> None:
        self.registry = registry = CollectorRegistry()
        label, self.model_name = ["model_name"], model_name

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(f"diffuspec:{name}", doc, [*label, *extra], registry=registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"diffuspec:{name}", doc, label, buckets=buckets, registry=registry)

        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of finished requests.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self.request_success = counter("request_success", "Requests ended, by finish reason (abort: the client "
                                       "left or the server stopped it; error: it failed).", ("finished_reason",))
        self.num_drafts = counter("spec_decode_num_drafts", "Verification steps that verified a draft.")
        self.num_draft_tokens = counter("spec_decode_num_draft_tokens", "Draft tokens verified.")
        self.num_accepted_tokens = counter("spec_decode_num_accepted_tokens", "Draft tokens accepted.")
        self.accepted_per_pos = counter("spec_decode_num_accepted_tokens_per_pos",
                                        "Draft tokens accepted at each draft position (0: the first).", ("position",))
        self.e2e = histogram("e2e_request_latency_seconds", "From arrival to the last token.", LATENCY_BUCKETS)
        self.ttft = histogram("time_to_first_token_seconds", "From arrival to the first step's tokens.",
                              LATENCY_BUCKETS)
        self.tpot = histogram("time_per_output_token_seconds", "After the first step, seconds per generated token.",
                              LATENCY_BUCKETS)
        self.queue = histogram("request_queue_time_seconds", "Waiting for a decoding slot.", LATENCY_BUCKETS)
        self.prompt_sizes = histogram("request_prompt_tokens", "Prompt tokens per request.", TOKEN_BUCKETS)
        self.generation_sizes = histogram("request_generation_tokens", "Generated tokens per request.", TOKEN_BUCKETS)
        self.running = Gauge("diffuspec:num_requests_running", "Requests generating (first tokens sent).", label,
                             registry=registry)
        self.waiting = Gauge("diffuspec:num_requests_waiting", "Requests accepted and not yet generating (queued "
                             "or in prefill).", label, registry=registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def track(self, prompt_tokens: int) -> RequestTracker:
        return RequestTracker(self, prompt_tokens)


class RequestTracker:
    """One request's path through the metrics: waiting until its first event, running until it ends."""

    def __init__(self, metrics: ServerMetrics, prompt_tokens: int) -> None:
        self.metrics, self.prompt_tokens = metrics, prompt_tokens
        self.arrival, self.first, self.last = time.perf_counter(), None, None
        self.closed = False
        metrics.waiting.labels(metrics.model_name).inc()

    def event(self, event: StepEvent) -> None:
        m = self.metrics
        if self.first is None:
            self.first = time.perf_counter()
            m.ttft.labels(m.model_name).observe(self.first - self.arrival)
            m.waiting.labels(m.model_name).dec()
            m.running.labels(m.model_name).inc()
        self.last = event
        name = m.model_name
        if event.draft_length:
            m.num_drafts.labels(name).inc()
            m.num_draft_tokens.labels(name).inc(event.draft_length)
            m.num_accepted_tokens.labels(name).inc(event.accepted)
            for position in range(event.accepted):
                m.accepted_per_pos.labels(name, str(position)).inc()
        m.generation_tokens.labels(name).inc(len(event.token_ids))

    def done(self, reason: str, queue_seconds: float | None = None) -> None:
        """The request ended: ``reason`` is the OpenAI finish reason, "abort" or "error"."""
        if self.closed:
            return
        self.closed = True
        m, name, now = self.metrics, self.metrics.model_name, time.perf_counter()
        (m.running if self.first is not None else m.waiting).labels(name).dec()
        m.request_success.labels(name, reason).inc()
        m.prompt_tokens.labels(name).inc(self.prompt_tokens)
        m.prompt_sizes.labels(name).observe(self.prompt_tokens)
        m.e2e.labels(name).observe(now - self.arrival)
        if queue_seconds is not None:
            m.queue.labels(name).observe(queue_seconds)
        generated = self.last.stats.new_tokens if self.last is not None else 0
        m.generation_sizes.labels(name).observe(generated)
        if self.first is not None and generated > 1:
            m.tpot.labels(name).observe((now - self.first) / (generated - 1))
