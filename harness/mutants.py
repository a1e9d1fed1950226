"""Mutants: re-creations of fixed bugs, injected only while the harness proves that a
scenario catches them. Never imported by production code."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
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
    `-`, never equal to the full basename the CP declares. The CP of the seed took any
    string as a closure; this project's wire grammar would refuse the short form with a
    400 (a second defence, tested on its own), so the mutant puts the lax parser back
    too, and the ghost loop itself is what the scenario must catch."""
    from nixfleet.core import closure, idents, wire

    def truncated(text: str) -> closure.ClosureHash:
        return closure.ClosureHash(text.rsplit("/", 1)[-1].split("-", 1)[0])

    lax = idents.Grammar("any string", lambda value: True)
    with (
        mock.patch.object(closure, "closure_hash_from_path", truncated),
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


MUTANTS.update(
    {
        "snapshot-replaced-by-older": snapshot_replaced_by_older,
        "report-hash-prefix": report_hash_prefix,
        "no-orphan-recovery": no_orphan_recovery,
        "no-rollback-signal": no_rollback_signal,
    }
)


@contextlib.contextmanager
def injected(name: str) -> Iterator[None]:
    """Apply a mutant for the duration of the block."""
    with MUTANTS[name]():
        yield
