"""Prometheus metrics of one API process (its own registry, so several apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ryla_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "ryla_request_seconds",
            "Seconds from a request's arrival to its answer, by route",
            ["route"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        # Where a generation's time goes: waiting for its group's slot, the Triton round trip, inside the pipeline.
        self.stage = Histogram(
            "ryla_generation_stage_seconds",
            "Seconds of a successful generation spent per stage (queue, triton, pipeline, encode)",
            ["route", "stage"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.in_flight = Gauge("ryla_in_flight", "Generations sent to Triton now", ["group"], registry=self.registry)
        self.queued = Gauge("ryla_queued", "Generations waiting for a slot now", ["group"], registry=self.registry)
        self.cold_start = Gauge(
            "ryla_cold_start_seconds",
            "Seconds from this API's start to the answer of its first generation (0 until then)",
            registry=self.registry,
        )
        # Set by whatever started Triton in this container (triton_modal.py): seconds from the container's start (or
        # its restore from a memory snapshot) to each phase of its cold start, e.g. triton_ready and first_image.
        self.cold_start_phase = Gauge(
            "ryla_cold_start_phase_seconds",
            "Seconds from this container's start to a phase of its cold start (triton_ready, first_image)",
            ["phase"],
            registry=self.registry,
        )
