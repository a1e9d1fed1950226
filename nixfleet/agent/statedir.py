"""The agent's state dir (lifecycle §5.9, §5.10): atomic files, read leniently.

`StateDir` maps `PersistedState.to_files()` onto `/var/lib/nixfleet-agent`: each file
is written to a temp file in the same directory, fsynced and renamed over the old
one (then the directory is fsynced), so a crash leaves the old or the new content,
never a torn file; a file mapped to None is deleted. Reading goes through
`PersistedState.read_files`: a file that is empty, truncated or of the wrong shape
is moved aside to `<file>.corrupt` (kept for the operator) with one warning line,
and the agent starts without it.

`ManifestCache` keeps the last good rollout manifests as `rollouts/<id>.json` and
`rollouts/<id>.json.sig`, the exact bytes received (they are re-verified on use).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

from nixfleet.core.agent_state import STATE_FILES, PersistedState
from nixfleet.core.errors import BadInput
from nixfleet.core.idents import ROLLOUT_ID

log = logging.getLogger("nixfleet.agent")

ROLLOUTS_DIR = "rollouts"
CORRUPT_SUFFIX = ".corrupt"


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically (temp file, fsync, rename, fsync dir)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure_dir(path: Path, what: str) -> Path:
    """Create `path` (0700) if needed; one-line BadInput if that is impossible."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise BadInput(f"cannot create {what} {path} ({exc.strerror or exc})") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise BadInput(f"{what} {path} is not writable")
    return path


class StateDir:
    """The reducer's persisted files, written atomically and only when they changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written: dict[str, str | None] = {}

    @classmethod
    def open(cls, path: Path) -> StateDir:
        return cls(ensure_dir(path, "state dir"))

    def _read_file(self, name: str) -> str | None:
        try:
            return (self.path / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            self._set_aside(name, "not UTF-8 text")
            return None
        except OSError as exc:
            log.warning("state file unreadable; treating as absent file=%s reason=%s", name, exc)
            return None

    def _set_aside(self, name: str, why: str) -> None:
        """Move an unusable file out of the reducer's way, keeping it for the operator."""
        path = self.path / name
        aside = self.path / f"{name}{CORRUPT_SUFFIX}"
        try:
            os.replace(path, aside)
        except OSError as exc:
            log.warning(
                "state file unusable; ignored, starting without it file=%s reason=%s "
                "move_failed=%s",
                path,
                why,
                exc.strerror or exc,
            )
            return
        log.warning(
            "state file unusable; moved aside, starting without it file=%s moved_to=%s reason=%s",
            path,
            aside,
            why,
        )

    def load(self) -> PersistedState:
        files = {name: self._read_file(name) for name in STATE_FILES}
        state, problems = PersistedState.read_files(files)
        for name, why in problems.items():
            self._set_aside(name, why)
            files[name] = None
        self._written = files
        return state

    def write(self, state: PersistedState) -> list[str]:
        """Write what changed since the last write or load; returns the files touched."""
        touched = []
        for name, text in state.to_files().items():
            if name in self._written and self._written[name] == text:
                continue
            target = self.path / name
            if text is None:
                target.unlink(missing_ok=True)
                _fsync_dir(self.path)
            else:
                atomic_write(target, text.encode("utf-8"))
            self._written[name] = text
            touched.append(name)
        return touched


class ManifestCache:
    """`<state-dir>/rollouts/<id>.json{,.sig}`: the last good manifests, bytes as received."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / ROLLOUTS_DIR

    def _paths(self, rollout_id: str) -> tuple[Path, Path]:
        if not ROLLOUT_ID.test(rollout_id):
            raise BadInput(f"rollout id {rollout_id!r} is not 64 lowercase hex characters")
        return self.dir / f"{rollout_id}.json", self.dir / f"{rollout_id}.json.sig"

    def path(self, rollout_id: str) -> Path:
        """The cached manifest's file (its signature is beside it, `.sig`)."""
        return self._paths(rollout_id)[0]

    def get(self, rollout_id: str) -> tuple[bytes, bytes] | None:
        body, sig = self._paths(rollout_id)
        try:
            return body.read_bytes(), sig.read_bytes()
        except OSError:
            return None

    def put(self, rollout_id: str, raw: bytes, signature: bytes) -> None:
        body, sig = self._paths(rollout_id)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Signature first: a crash in between leaves no body, which reads as a miss.
        atomic_write(sig, signature, mode=0o644)
        atomic_write(body, raw, mode=0o644)

    def discard(self, rollout_id: str) -> None:
        for path in self._paths(rollout_id):
            path.unlink(missing_ok=True)

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.dir)
        except OSError:
            return []
        return sorted(n[: -len(".json")] for n in names if n.endswith(".json"))
