"""Prometheus metrics of one server (its own registry, so several apps in one process do not clash)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter("bonsynth_serve_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("bonsynth_serve_errors", "Requests answered with an error, by endpoint, status "
                              "and error type", ["endpoint", "status", "type"], registry=r)
        self.latency = Histogram("bonsynth_serve_request_latency_seconds", "Request latency, receipt to answer "
                                 "(to the last chunk when streaming)", ["endpoint"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.in_flight = Gauge("bonsynth_serve_requests_in_flight", "Completion requests admitted and not yet "
                               "answered (queued or running)", registry=r)
        self.candidates = Counter("bonsynth_serve_candidates_scored", "Candidates scored by the reward model(s)",
                                  registry=r)
        self.pruned = Counter("bonsynth_serve_candidates_pruned", "Candidates stopped mid-generation by "
                              "speculative rejection (--prune-keep)", registry=r)
        self.rm_batch = Histogram("bonsynth_serve_rm_batch_candidates", "Candidates per reward-model scoring "
                                  "call (cross-request batching makes it larger)", buckets=SIZE_BUCKETS, registry=r)
        self.rm_batch_requests = Histogram("bonsynth_serve_rm_batch_requests", "Requests per reward-model "
                                           "scoring call", buckets=SIZE_BUCKETS, registry=r)
        self.rm_seconds = Histogram("bonsynth_serve_rm_seconds", "Wall time of one reward-model scoring call",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.gen_batch_requests = Histogram("bonsynth_serve_generate_batch_requests", "Requests per "
                                            "backend.generate call", buckets=SIZE_BUCKETS, registry=r)
        self.gen_seconds = Histogram("bonsynth_serve_generate_seconds", "Wall time of one backend.generate call",
                                     buckets=LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
