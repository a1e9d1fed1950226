"""Mutants: re-creations of fixed bugs, injected only while the harness proves that a
scenario catches them. Never imported by production code."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from unittest import mock

Mutant = Callable[[], AbstractContextManager[object]]


def sweep_raw_text_compare() -> AbstractContextManager[object]:
    """Seed 000 rollback timer: compare the stored RFC 3339 deadline as raw text with
    SQLite's space-separated datetime. `T` sorts above a space, so a same-day deadline
    never looks expired. (`datetime(:now)` keeps the run's own clock.)"""
    from nixfleet.cp import store

    return mock.patch.object(
        store, "SWEEP_PREDICATE", "state = 'pending' AND confirm_deadline < datetime(:now)"
    )


MUTANTS: dict[str, Mutant] = {
    "sweep-raw-text-compare": sweep_raw_text_compare,
}


def snapshot_replaced_by_older() -> AbstractContextManager[object]:
    """Seed 000 stair-step: any verified artifact replaces the snapshot, so the baked
    build-time artifact (one release behind) walks the CP back."""
    from nixfleet.cp import service

    return mock.patch.object(service, "replaces", lambda current, signed_at: True)


@contextlib.contextmanager
def report_hash_prefix() -> Iterator[None]:
    """Seed 000 ghost loop: the agent reports only the 32-char hash before the first
    `-` of its running system, never equal to the full basename the CP declares, while
    its switch and confirm go through ("activation appears successful but never
    settles"). Put back where every agent shell turns its checkin into the body
    (`wire.dump_checkin_request`): the real agent's own reading of its links (switch
    verification, rollback) stays right, as the seed's did. The CP of the seed took
    any string as a closure; this project's wire grammar would refuse the short form
    with a 400 (a second defence, tested on its own), so the mutant puts the lax parser
    back too, and the ghost loop itself is what the scenario must catch."""
    from dataclasses import replace

    from nixfleet.core import closure, idents, wire

    dump = wire.dump_checkin_request

    def short(c: wire.CheckinRequest) -> dict[str, Any]:
        gen = c.current_generation
        prefix = closure.ClosureHash(gen.closure_hash.split("-", 1)[0])
        return dump(replace(c, current_generation=replace(gen, closure_hash=prefix)))

    lax = idents.Grammar("any string", lambda value: True)
    with (
        mock.patch.object(wire, "dump_checkin_request", short),
        mock.patch.object(wire, "CLOSURE_HASH", lax),
    ):
        yield


def no_orphan_recovery() -> AbstractContextManager[object]:
    """Seed 001 before the fix: after a DB wipe a confirm with no row gets 410 and the
    host rolls back a good activation."""
    from nixfleet.core import dispatch

    original = dispatch.decide_confirm

    def strict(*args: object, **kwargs: object) -> dispatch.ConfirmVerdict:
        verdict = original(*args, **kwargs)  # type: ignore[arg-type]
        V = dispatch.ConfirmVerdict
        return V.REJECT if verdict is V.ORPHAN else verdict

    return mock.patch.object(dispatch, "decide_confirm", strict)


def no_rollback_signal() -> AbstractContextManager[object]:
    """rollback-and-halt that never tells a Failed host to roll back."""
    from nixfleet.core import dispatch

    return mock.patch.object(dispatch, "rollback_signal", lambda *a, **k: None)


def prime_from_build_time() -> AbstractContextManager[object]:
    """Seed 000 stair-step as it was: the CP primes from the artifact baked into its
    closure (always one release behind) and meets the forge only at its first poll, so
    after every restart it serves, and dispatches, the previous release for a while."""
    from nixfleet.core.snapshot import SOURCE_BUILD_TIME
    from nixfleet.cp import lifecycle

    return mock.patch.object(lifecycle, "PRIME_ORDER", (SOURCE_BUILD_TIME,))


def machine_id_from_raw_cn() -> AbstractContextManager[object]:
    """The CP's identity check takes any certificate CN as the machine id, the
    `agent-<id>.<suffix>` wrapper neither checked nor stripped."""
    from nixfleet.cp import issuance

    return mock.patch.object(issuance, "extract_machine_id", lambda cn, _suffix: cn)


def attestation_rejected() -> AbstractContextManager[object]:
    """The CP's H15 check refuses every `lastConfirmedAt` attestation signature."""
    from nixfleet.cp.service import CpService

    return mock.patch.object(CpService, "_attestation_ok", lambda *_args: False)


def checkin_parse_drops_probes() -> AbstractContextManager[object]:
    """The CP's checkin parser loses the body's `healthProbes`."""
    from dataclasses import replace

    from nixfleet.core import wire

    parse = wire.parse_checkin_request

    def lossy(value: object, *, source: str = "checkin body") -> wire.CheckinRequest:
        return replace(parse(value, source=source), health_probes=())

    return mock.patch.object(wire, "parse_checkin_request", lossy)


MUTANTS.update(
    {
        "snapshot-replaced-by-older": snapshot_replaced_by_older,
        "prime-from-build-time": prime_from_build_time,
        "report-hash-prefix": report_hash_prefix,
        "no-orphan-recovery": no_orphan_recovery,
        "no-rollback-signal": no_rollback_signal,
        "machine-id-from-raw-cn": machine_id_from_raw_cn,
        "attestation-rejected": attestation_rejected,
        "checkin-parse-drops-probes": checkin_parse_drops_probes,
    }
)


@contextlib.contextmanager
def injected(name: str) -> Iterator[None]:
    """Apply a mutant for the duration of the block."""
    with MUTANTS[name]():
        yield
