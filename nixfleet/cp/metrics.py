"""Prometheus metrics of one CP (a registry per service, so tests and sims stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from nixfleet import __version__


class CpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.checkins = Counter("nixfleet_checkins", "Agent checkins", registry=self.registry)
        self.dispatches = Counter("nixfleet_dispatches", "Targets issued", registry=self.registry)
        self.confirms = Counter("nixfleet_confirms", "Confirms accepted", registry=self.registry)
        self.gate_blocks = Counter(
            "nixfleet_gate_block",
            "Dispatches held by a fleet gate",
            ["gate"],
            registry=self.registry,
        )
        self.clock_skew = Gauge(
            "nixfleet_agent_clock_skew_seconds",
            "Agent clock minus CP clock at the host's last checkin (its sentAt)",
            ["host"],
            registry=self.registry,
        )
        build = Gauge(
            "nixfleet_cp_build_info",
            "Build information",
            ["version", "git_commit"],
            registry=self.registry,
        )
        build.labels(version=__version__, git_commit="unknown").set(1)
