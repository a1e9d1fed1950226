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


@contextlib.contextmanager
def injected(name: str) -> Iterator[None]:
    """Apply a mutant for the duration of the block."""
    with MUTANTS[name]():
        yield
