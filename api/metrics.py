"""Prometheus metrics of one API process (its own registry, so several apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ryla_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "ryla_request_seconds",
            "Seconds from a generation request's arrival to its answer",
            ["route"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
            registry=self.registry,
        )
        self.triton_seconds = Histogram(
            "ryla_triton_seconds",
            "Seconds a generation spent in Triton",
            ["route"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
            registry=self.registry,
        )
        self.in_flight = Gauge("ryla_in_flight", "Generations sent to Triton", ["group"], registry=self.registry)
        self.queued = Gauge("ryla_queued", "Generations waiting for a slot", ["group"], registry=self.registry)
        self.cold_start = Gauge(
            "ryla_cold_start_seconds",
            "Seconds from this process's start to the answer of its first generation",
            registry=self.registry,
        )
