"""The agent state dir: atomic files, change-only writes, lenient reads, manifest cache."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nixfleet.agent.statedir import ManifestCache, StateDir, atomic_write
from nixfleet.core.agent_state import (
    LAST_CONFIRMED_AT,
    LAST_DISPATCHED,
    LAST_FAILED_CLOSURE,
    LastConfirmed,
    LastDispatched,
    LastFailedClosure,
    PersistedState,
)
from nixfleet.core.closure import ClosureHash
from nixfleet.core.errors import BadInput
from nixfleet.core.wire import Activate, EvaluatedTarget, FetchOutcome

NOW = datetime(2026, 4, 24, 10, 0, tzinfo=UTC)
C1 = ClosureHash("1" * 32 + "-nixos-system-h1-1")
C2 = ClosureHash("2" * 32 + "-nixos-system-h1-2")
RID = "a" * 64


def full_state() -> PersistedState:
    target = EvaluatedTarget(
        closure_hash=C2,
        channel_ref=RID,
        evaluated_at=NOW,
        rollout_id=RID,
        signed_at=NOW,
        signed_at_text="2026-04-24T10:00:00Z",
        freshness_window_secs=3600,
        wave_index=0,
        activate=Activate(),
    )
    return PersistedState(
        last_dispatched=LastDispatched(
            target=target, dispatched_at=NOW, confirm_deadline=NOW + timedelta(seconds=360)
        ),
        last_confirmed_at=LastConfirmed(closure_hash=C1, confirmed_at=NOW),
        last_target=target,
        last_fetch_outcome=FetchOutcome(result="ok", rollout_id=RID),
        last_failed_closure=LastFailedClosure(
            closure_hash=C2, failure_count=2, last_failure_at=NOW, reason="switch-exit"
        ),
    )


def test_round_trip_and_deletion(tmp_path: Path) -> None:
    sd = StateDir.open(tmp_path / "state")
    assert sd.load() == PersistedState()
    state = full_state()
    touched = sd.write(state)
    assert set(touched) == {
        LAST_DISPATCHED, LAST_CONFIRMED_AT, "last_target", "last_fetch_outcome",
        LAST_FAILED_CLOSURE,
    }  # fmt: skip
    assert (tmp_path / "state" / LAST_CONFIRMED_AT).read_text() == f"{C1}\n2026-04-24T10:00:00Z\n"
    assert oct((tmp_path / "state" / LAST_DISPATCHED).stat().st_mode & 0o777) == "0o600"
    assert StateDir(tmp_path / "state").load() == state
    # Unchanged files are not rewritten.
    assert sd.write(state) == []
    cleared = PersistedState(last_confirmed_at=state.last_confirmed_at)
    assert set(sd.write(cleared)) == {
        LAST_DISPATCHED, "last_target", "last_fetch_outcome", LAST_FAILED_CLOSURE,
    }  # fmt: skip
    assert sorted(os.listdir(tmp_path / "state")) == [LAST_CONFIRMED_AT]
    assert StateDir(tmp_path / "state").load() == cleared


def test_malformed_files_read_as_absent(tmp_path: Path) -> None:
    sd = StateDir.open(tmp_path)
    sd.write(full_state())
    (tmp_path / LAST_DISPATCHED).write_text("{not json")
    (tmp_path / LAST_CONFIRMED_AT).write_bytes(b"\xff\xfe")
    loaded = StateDir(tmp_path).load()
    assert loaded.last_dispatched is None
    assert loaded.last_confirmed_at is None
    assert loaded.last_failed_closure == full_state().last_failed_closure


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"one")
    atomic_write(target, b"two", mode=0o644)
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_unusable_state_dir_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(BadInput, match=r"^cannot create state dir .*file/state"):
        StateDir.open(tmp_path / "file" / "state")


def test_manifest_cache(tmp_path: Path) -> None:
    cache = ManifestCache(tmp_path)
    assert cache.get(RID) is None
    cache.put(RID, b'{"x":1}', b"s" * 64)
    assert cache.get(RID) == (b'{"x":1}', b"s" * 64)
    assert sorted(os.listdir(tmp_path / "rollouts")) == [f"{RID}.json", f"{RID}.json.sig"]
    assert cache.ids() == [RID]
    cache.discard(RID)
    assert cache.get(RID) is None
    with pytest.raises(BadInput):
        cache.get("../../etc/passwd")
