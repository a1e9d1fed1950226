"""The scenario catalogue: one module per entry of the failure-mode catalogue (see
`docs/scenarios.md`), plus the properties the harness checks on every backend.
`CATALOGUE` lists them in the catalogue's order (sections A–H)."""

from __future__ import annotations

import importlib

from harness.fleet import Scenario

IDS: tuple[str, ...] = (
    "clean-rollout",
    "cp-flap-missing-agenix-secret",
    "cp-migration-name-mismatch",
    "forge-tls-local-ca",
    "ecdsa-high-s-tpm",
    "activation-nixos-rebuild-flag-rename",
    "rollback-timer-datetime-compare",
    "cp-stair-step-prime",
    "ghost-loop-closure-hash-truncation",
    "self-referential-closure-drift",
    "dr-preflight-gate",
    "dr-cp-db-wipe-recovery",
    "dr-verify-healthz",
    "dr-verify-channel-fresh",
    "dr-verify-revocations-replayed",
    "dr-verify-all-agents",
    "dr-fail-cp-refuses-start",
    "dr-fail-agents-dont-reconnect",
    "dr-fail-slow-upstream",
    "cookbook-deploy-change",
    "cookbook-mint-token",
    "cookbook-revoke-sql",
    "cookbook-stuck-agent-diagnose",
    "cookbook-org-root-rotation",
    "cookbook-add-host",
    "agent-identity-binding",
    "agent-offline-manifest-cache",
    "agent-rollback-target-path",
    "agent-self-switch-survives",
    "agent-cold-start-503",
    "copy-interrupted-link-drop",
    "store-repair-dangling-rows",
    "secrets-lost-after-store-corruption",
    "oom-disk-pressure",
    "cache-endpoint-namespace",
    "cache-401-is-not-failure",
    "cache-root-user-token-split",
    "attic-imds-timeout",
    "cache-push-or-true-semantics",
    "ci-container-store-shadowing",
    "harness-smoke",
    "harness-signed-roundtrip",
    "harness-corruption-rejection",
    "harness-future-dated-rejection",
    "harness-manifest-tamper-rejection",
    "harness-auditor-chain",
    "harness-module-rollouts-wire",
    "harness-stale-target",
    "harness-boot-recovery",
    "harness-deadline-expiry",
    "harness-enroll-replay",
    "harness-concurrent-checkin",
    "harness-secret-hygiene",
    "harness-rollback-policy",
    "cp-wire-contract",
    "cp-dispatch-idempotency",
    "cp-enroll-renew-contract",
    "cp-poll-retain-and-ready",
    "reconciler-gate-parity",
    "quarantine-gate-split-brain",
    "channel-edge-successor-release",
    "probe-unobserved-not-passing",
    "compliance-count-dedupe",
    "confirm-deadline-cascade",
    "enroll-replay-after-wipe",
    "vm-lifecycle-footguns",
)
"""Every entry, in report order; module `scenarios.<id with _ for ->`."""

PROPERTIES = frozenset({"clean-rollout"})
"""Entries that are the harness's own properties, not catalogue failure modes."""

CATALOGUE: list[Scenario] = [
    importlib.import_module(f"scenarios.{sid.replace('-', '_')}").SCENARIO for sid in IDS
]


def by_id(scenario_id: str) -> Scenario | None:
    return next((s for s in CATALOGUE if s.id == scenario_id), None)
