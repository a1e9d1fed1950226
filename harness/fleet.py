"""The backend-neutral fleet a scenario drives, in the NixOS test driver's spirit.

A scenario is a function of a `Fleet`: it releases revisions, stops, crashes and wipes
the control plane, cuts hosts off, skews clocks, makes activations or health probes
fail, kills agents, waits for conditions; then checkers judge the recorded `History`
and the `Final` state the fleet reports at the end. Every backend (`sim`: the simpy
world over the production cores; `local`: real CP and agent processes with their own
Nix stores; later `ssh`, `qemu`, `tpm`) implements the same verbs, so a scenario is
written once and never reads a backend's internals.

Time: `Fleet.now()` is seconds since the fleet started, simulated on `sim` and wall
time on `local`. Durations in scenarios are written in agent polls
(`fleet.polls(n)`), so one scenario reads the same on a 60 s simulated poll and a 2 s
real one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleet_sim.checkers import (
    Checker,
    Final,
    HostFinal,
    RolloutFinal,
    Run,
    Verdict,
    passed,
    run_checkers,
)
from fleet_sim.fleetgen import Signer
from fleet_sim.history import Event, History

# The run records and checkers are the simulator's own, shared by every backend.
__all__ = [
    "Checker",
    "Event",
    "Final",
    "History",
    "HostFinal",
    "RolloutFinal",
    "Run",
    "Verdict",
    "passed",
    "run_checkers",
]

# --- history ---------------------------------------------------------------------------

# Event kinds every backend records (checkers rely on these and on their details).
CP_START = "cp-start"  # {boot}
CP_STOP = "cp-stop"  # {}
CP_CRASH = "cp-crash"  # {}
CP_WIPE = "cp-wipe"  # {}
RELEASE = "release"  # {release, rollout}: CI published release `release`, its rollout id
SNAPSHOT = "snapshot"  # {release}: the CP now serves release `release`
CHECKIN = "checkin"  # host
DISPATCH = "dispatch"  # host {rollout, closure}
ACTIVATE = "activate"  # host {closure}: a switch to `closure` started
ACTIVATION_FAILED = "activation-failed"  # host {closure}
CONFIRM = "confirm"  # host {rollout, status, closure}
ROLLBACK = "rollback"  # host {reason}
REVOKE = "revoke"  # host
AGENT_KILL = "agent-crash"  # host
AGENT_START = "agent-start"  # host
FAULT = "fault"  # host? {name, action: start|end}
CALL = "call"  # host? (the caller) {method, path, as_, status}: a scenario's Fleet.call
CHECKIN_FAILED = "checkin-failed"  # host {reason}: an agent's checkin got no answer or an error
MANIFEST = "manifest"  # host {rollout, source}: a rollout manifest verified, from "cache" or "cp"
NONCES = "nonces"  # {entries}: CI published the bootstrap-nonces allowlist (-1: withdrew it)
ORG_ROOT = "org-root"  # {current, previous}: trust.json orgRootKey rewritten (read at CP start)

POLL_FAILED = "poll-failed"  # {upstream, reason}: the CP kept its snapshot: fetch failed or refused
# e.g. reason "bad-signature: …", "future-dated: …" (a VerifyError), "GET …: HTTP 503"

TAMPER_MODES = (
    "artifact",
    "artifact-signature",
    "manifest-payload",
    "manifest-signature",
    "manifest-swap",
)
"""`Fleet.publish(tamper=…)`: one byte flipped (XOR 1) in what CI's forge serves of the
release: the fleet artifact at offset 50, its signature at offset 10, each rollout
manifest's payload at offset 50, its signature at offset 10; or `manifest-swap`: the
installed release's manifest (validly signed) served under the new rollout id."""

FORGE_MODES = ("ok", "down", "hang", "unauthorized")
"""`Fleet.forge_fault` modes: healthy; every request answered 503; requests held
unanswered (a partition); 401 (an expired forge token)."""

FORGE_TRUST = ("flag", "os-store", "none")
"""`Fleet.forge_trust`: how the CP trusts the forge's private CA: `--upstream-ca`; only
through the CP host's OS trust store (the public roots plus the forge's CA, as NixOS
`security.pki.certificateFiles` builds it); not at all (the OS store without it)."""

CACHE_MODES = ("ok", "down")
"""`Fleet.cache_fault` modes: the hosts' binary cache healthy, or unavailable (every
substitution fails: a realise of a closure not yet in the host's store fails)."""


def check_mode(what: str, value: str, modes: tuple[str, ...]) -> None:
    """A verb's mode argument checked the same way on every backend."""
    if value not in modes:
        raise ValueError(f"{what} {value!r} not in {modes}")


# --- the fleet a scenario drives ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelShape:
    """A release channel besides `stable` (`Shape.channels`); its hosts are named
    `<name>-<i>` on every backend (`Fleet.hosts_of`)."""

    name: str
    hosts: int = 1
    local_hosts: int = 1
    waves: int = 1
    """0: all-at-once (an empty wave list, lifecycle §3.2); else planned as `stable`'s."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    """The fleet a scenario needs. Backends scale `hosts` to what they can run
    (`local_hosts` real agents on one machine)."""

    hosts: int = 100
    local_hosts: int = 3
    waves: int = 1
    policy: str = "rollback-and-halt"
    soak_minutes: int = 0
    """Each wave's soak at a 60 s poll, i.e. in polls. Declared in whole minutes, so a
    backend with a shorter poll declares its proportion rounded down (0 on `local`
    under 30)."""
    confirm_window_polls: float = 6.0
    """The CP's confirm window in agent polls (360 s at a 60 s poll)."""
    revocations_sidecar: bool = False
    """The CP polls a signed revocations list on the forge (`--revocations-artifact-url`,
    published empty before it starts; `Fleet.revoke` adds to it)."""
    nonce_allowlist: bool = False
    """The CP requires a signed bootstrap-nonces allowlist on the forge
    (`--bootstrap-nonces-artifact-url`); CI lists the fleet's own hosts' tokens before it
    starts, `Fleet.publish_nonces` adds to it."""
    release_key: str = "ed25519"
    """CI's release key: `ed25519`, or `ecdsa-p256` signing as a TPM may: the installed
    release low-s, every later signature (fleet artifacts, manifests) the high-s twin
    (r, n−s), which TPM2_Sign emits about half the time (seed 000 `BadSignature`)."""
    installed_signed_ago: float = 0.0
    """How many seconds before the fleet opened its installed release (0) was signed; a
    scenario that publishes releases signed in the past needs an older one, since a
    snapshot never goes back to an older `signedAt`."""
    probe_mode: str = "enforce"
    """The agents' health-check mode (`enforce`, `permissive`, `disabled`)."""
    health_failure_polls: float | None = None
    """The CP's H11 threshold (`--health-failure-secs`) in polls; None: the backend's
    default (one poll on `sim`, the 10 s floor, 5 polls, on `local`)."""
    channels: tuple[ChannelShape, ...] = ()
    """Release channels besides `stable` (which keeps `hosts`, `local_hosts`, `waves`
    and `soak_minutes`; `Fleet.waves` and `Final.waves` are its waves)."""
    channel_edges: tuple[tuple[str, str], ...] = ()
    """Fleet `channelEdges` as (gates, gated): `gated` waits for `gates`' rollout to
    converge (lifecycle §3.4)."""
    seed: int = 1


def flip_closure_digit(raw: bytes) -> bytes:
    """A signed fleet artifact with one byte XOR 1: the first digit of the first
    `nixos-system-` closure hash (a digit stays a digit: the JSON and the store basename
    grammar still hold, the signature does not)."""
    at = raw.index(b"-nixos-system-") - 32
    digit = next(i for i in range(at, at + 32) if raw[i : i + 1].isdigit())
    return raw[:digit] + bytes([raw[digit] ^ 1]) + raw[digit + 1 :]


class NotAvailable(Exception):
    """A verb this backend cannot perform (e.g. a shell on the simulated CP host)."""


class CommandFailed(AssertionError):
    """A command run on a fleet host (`operator`) exited non-zero; the message says
    which, its status and the tail of its stderr."""


OPERATOR = "operator"
"""`Fleet.call(as_=OPERATOR)`: an operator's client certificate."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HostDiagnosis:
    """Seed 002 "Diagnose a stuck agent", the host half (`Fleet.diagnose_host`): what
    the recipe's ssh commands show."""

    agent: str
    """The agent unit's `systemctl is-active` word: `active`, `inactive`, `failed` (a
    process without systemd: `active` while it runs, else `inactive`)."""
    log_tail: tuple[str, ...]
    """The agent's last 50 log lines (`journalctl -u nixfleet-agent -n 50`)."""
    current: str | None
    """The current-system basename (`readlink /run/current-system`)."""
    source: str
    """Where it was read (the host, and on `ssh` its address)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer of the CP. `status` 0: no HTTP answer at all (refused, reset)."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)

    def line(self) -> str:
        """For step failures: status and the body's first 200 characters."""
        return f"{self.status} {self.body[:200].decode(errors='replace')}"


class Cp(Protocol):
    def stop(self) -> None:
        """SIGTERM and wait (systemctl stop)."""

    def start(self) -> None:
        """Start and wait until it listens (systemctl start). Raises CpExited when the
        process exits instead (a refusal at start-up: bad trust file, foreign schema)."""

    def crash(self) -> None:
        """SIGKILL: memory lost, the DB kept."""

    def corrupt_baked(self, on: bool = True) -> None:
        """From the next start, the artifact baked into the CP's closure (its build-time
        fallback, the release before the newest) has one byte flipped: a digit of a
        host's closure hash (`flip_closure_digit`), so it still parses but its signature
        no longer verifies. `on=False` bakes it intact again."""

    def wipe(self) -> None:
        """Seed 001 step 2: delete state.db, -wal, -shm (the CP must be stopped)."""

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        """Run a read query against the CP's DB (as the cookbook's sqlite3 does)."""

    def reconfigure(self, *, confirm_window: float, switch_timeout: float) -> None:
        """Redeploy with this confirm window (`--confirm-deadline-secs`) and agents'
        switch budget (the CP's `--agent-switch-timeout-secs`, the agents'
        `--switch-timeout-secs`), in seconds: the CP restarts with them, then the
        agents. A CP refusing them raises CpExited with its one line (its own check,
        `nixfleet.cp.config.confirm_window_problem`, on every backend); it is then
        down and the fleet keeps its previous settings (`start()` starts it so)."""


class Fleet(Protocol):
    backend: str
    shape: Shape

    # Read-only, so that each backend's own Cp and a history built on demand conform.
    @property
    def cp(self) -> Cp: ...

    @property
    def history(self) -> History: ...

    @property
    def hosts(self) -> Sequence[str]: ...

    @property
    def waves(self) -> Sequence[Sequence[str]]: ...

    def hosts_of(self, channel: str) -> Sequence[str]:
        """The hosts on `channel` (`stable` or one of `shape.channels`), sorted."""

    @property
    def poll_secs(self) -> float:
        """The agents' poll interval on this backend."""

    def polls(self, n: float) -> float:
        """`n` agent polls, in seconds of this backend."""

    @property
    def confirm_window(self) -> float:
        """The CP's confirm window in seconds: `shape.confirm_window_polls` polls, or
        the least the CP accepts when that is longer (30 s on `local`)."""

    @property
    def switch_timeout(self) -> float:
        """The agents' switch budget in seconds (`--switch-timeout-secs`, which the CP
        is told): 300 s, the agents' default, on `sim`; the confirm window less 10 s on
        `local`. On `local` a `slow_activation` longer than it fails (the agent gives the
        switch up); `sim` never cuts a switch off."""

    def now(self) -> float: ...

    # CI and the fleet's hosts
    def release(
        self,
        *,
        failing: Iterable[str] = (),
        unhealthy: Iterable[str] = (),
        keep: Iterable[str] = (),
    ) -> int:
        """Publish the next release (every host a new closure); hosts in `failing` get a
        switch that fails, those in `unhealthy` fail their health probes once switched.
        Hosts in `keep` keep the closure the previous release declared (CI rebuilt
        nothing for them; every rollout id changes all the same); `unhealthy` then
        names that kept closure. Returns the release number (the installed one is 0)."""

    def publish(
        self,
        *,
        signed_at: float = 0.0,
        freshness_window_minutes: int | None = None,
        tamper: str | None = None,
    ) -> int:
        """Publish the next release as `release()` does (every host a new closure, none
        failing), but signed `signed_at` seconds from now (negative: in the past), with
        the channel's `freshnessWindow` (default 30 days) and, with `tamper`
        (TAMPER_MODES), one byte of what the forge serves flipped from the start.
        Returns the release number."""

    def partition(self, hosts: Iterable[str], duration: float) -> None:
        """Cut these hosts off the CP for `duration` seconds (from now)."""

    def forge_fault(self, mode: str) -> None:
        """From now on the CP's upstream forge behaves as `mode` (FORGE_MODES); "ok"
        heals it. Recorded as a `forge` fault."""

    def forge_trust(self, how: str) -> None:
        """From the CP's next start, it trusts the forge's private CA as `how` says
        (FORGE_TRUST; "flag" at first). NotAvailable where the forge has no TLS (sim)."""

    def cache_fault(self, mode: str) -> None:
        """From now on the hosts' binary cache behaves as `mode` (CACHE_MODES); "ok"
        heals it. Recorded as a `cache` fault."""

    def revoke(self, hosts: Iterable[str], *, reason: str = "compromised") -> None:
        """CI publishes the signed revocations sidecar naming these hosts too (every
        host revoked so far, `notBefore` now: each cert they hold is revoked). Needs
        `Shape(revocations_sidecar=True)`; the CP applies it at its next poll."""

    def skew_clock(self, host: str, secs: float) -> None: ...

    def slow_activation(self, hosts: Iterable[str], secs: float) -> None:
        """From the next release on, these hosts' switches take `secs` seconds."""

    def switch_by_hand(self, host: str) -> str:
        """An operator deploys a workstation build of the host's declared closure by
        hand, behind the agent's back: the same `nixos-system-<host>-<gen>` name, another
        store hash (seed 000 "CP's current closure ≠ artifact's declared"). Returns the
        closure the host now runs."""

    def slow_probes(self, hosts: Iterable[str], secs: float) -> None:
        """From now on, after each switch these hosts' health probes give their first
        result only `secs` seconds later (reported `unknown` meanwhile)."""

    def kill_agent(self, host: str) -> None:
        """SIGKILL the host's agent."""

    def start_agent(self, host: str) -> None: ...

    # observing
    def current(self, host: str) -> str | None:
        """The running system's full store basename."""

    def target(self, host: str) -> str | None:
        """What the newest release declares for the host."""

    def generations(self, host: str) -> int:
        """How many generations the host's system profile holds (`nix-env
        --list-generations`): each switch to a new closure adds one."""

    def dispatch_record(self, host: str) -> Mapping[str, str] | None:
        """The dispatch the host's agent holds unconfirmed (its state dir's
        `last_dispatched`, lifecycle §5.9): `closure`, `rollout`, `dispatched_at`
        (RFC 3339); None without one."""

    def diagnose_host(self, host: str) -> HostDiagnosis:
        """The host half of seed 002's stuck-agent recipe (`HostDiagnosis`), read on the
        host (testinfra over SSH on `ssh`); NotAvailable where hosts are simulated."""

    def converged(self, hosts: Iterable[str] | None = None) -> bool: ...

    def call(
        self,
        method: str,
        path: str,
        *,
        as_: str | None,
        body: object = None,
        cert: str | None = None,
    ) -> Reply:
        """One request to the CP as a client would send it: `as_` a host name (that
        host's agent certificate), OPERATOR, or None (no client certificate); `body`
        bytes as they are, anything else as JSON. Through the same gates and handlers
        the agents meet: real mTLS on `local`, the CP's `endpoints` on `sim`.

        `as_` may name a host outside the fleet: it presents a certificate the fleet CA
        issues for that name now. `cert`: present this certificate PEM (e.g. one
        `/v1/enroll` just issued) with `as_`'s key instead of the one it holds."""

    # enrollment (`/v1/enroll`, `/v1/agent/renew`; NotAvailable where the CP has none)
    def mint_token(self, host: str, *, key_of: str | None = None, org_key: int = 0) -> Any:
        """A fresh bootstrap token for `host` as `nixfleet mint-token` prints it (the JSON
        value), bound to the SSH host key of `key_of` (default `host`'s own; any name
        gets a key of its own) and signed with org root key generation `org_key` (0: the
        fleet's first; see `set_org_root`)."""

    def csr(self, host: str, *, key_of: str | None = None) -> str:
        """A CSR PEM with CN `host`, signed by `key_of`'s SSH host key (default `host`'s)."""

    def publish_nonces(self, entries: Iterable[Mapping[str, str]] | None) -> None:
        """CI signs `bootstrap-nonces.json`: the fleet's own hosts' entries plus
        `entries` (`{nonce, hostname, expiresAt}`, as `mint-token` prints them), replacing
        the list before; None withdraws it from the forge. Needs
        `Shape(nonce_allowlist=True)`; the CP applies it at its next poll."""

    def set_org_root(self, current: int, previous: int | None) -> None:
        """The CP host's trust.json as a redeploy installs it after the rotation recipe:
        `orgRootKey` of key generation `current` (0: the fleet's first) and `previous`
        (None: no grace key). The CP reads trust.json per enrollment (protocol §1.3, a
        broken one answers 500), so it applies to the next `/v1/enroll`."""

    def deploy_token(self, host: str, token: Any) -> None:
        """Agenix installs `token` (as `mint_token` returns it) at the host's
        `--bootstrap-token-file`; its agent reads it when it next enrols."""

    def expire_cert(self, host: str) -> None:
        """The host was off past its certificate's validity: its `--client-cert` file
        holds one the fleet CA issued for its key days ago, expired since. Its agent must
        be stopped (it loads the file when it starts)."""

    def operator(self, cmd: str) -> str:
        """A shell on the CP host (curl | jq, sqlite3, grep on the journal, verbatim);
        NotAvailable on backends without one."""

    def release_signer(self) -> Signer:
        """CI's release key as a device that hands P-256 signatures back as it drew
        them, s > n/2 about half the time (`raw_s`): the TPM on `tpm`. NotAvailable
        where the release key is a software key (`sim`, `local`)."""

    # waiting
    def sleep(self, secs: float) -> None: ...

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Until `predicate()` holds; on timeout raise StepTimeout naming `what` and
        what the last try saw."""

    def final(self) -> Final: ...


class StepTimeout(AssertionError):
    """A scenario step waited in vain: the scenario fails with this line."""


class StepFailed(AssertionError):
    """A scenario step saw what must not be (a wrong status, a missing line): the
    scenario fails with this line."""


class CpExited(StepFailed):
    """`cp.start()`: the CP exited before it listened. A step that expects the refusal
    catches it; anywhere else the scenario fails with this line."""

    def __init__(self, status: int, output: str, secs: float) -> None:
        last = output.strip().splitlines()[-3:]
        super().__init__(f"the CP exited {status} after {secs:.1f} s at start: {' | '.join(last)}")
        self.status = status
        self.output = output
        """Everything the run wrote (stdout and stderr: its journal)."""
        self.secs = secs
        """From the start to the exit."""


def expect(ok: bool, what: str, saw: object = "") -> None:
    """A step's assertion: `what` must hold; StepFailed names it and what was seen."""
    if not ok:
        raise StepFailed(f"expected {what}" + (f"; saw {saw}" if saw != "" else ""))


def wait_loop(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    now: Callable[[], float],
    advance: Callable[[float], None],
    interval: float,
    seen: Callable[[], str] = lambda: "",
) -> None:
    """The one `wait_until` loop: sim advances simulated time, local sleeps."""
    deadline = now() + timeout
    while True:
        if predicate():
            return
        if now() >= deadline:
            last = seen()
            raise StepTimeout(
                f"waited {timeout:g} s for {what}" + (f"; saw {last}" if last else "")
            )
        advance(min(interval, max(deadline - now(), 0.0)))


Steps = Callable[[Fleet], None]


def not_written(why: str) -> Steps:
    """The steps of an entry that runs on no backend yet: they say why if asked."""

    def steps(fleet: Fleet) -> None:
        raise NotAvailable(why)

    return steps


@dataclass(frozen=True, kw_only=True)
class Scenario:
    id: str
    """kebab-case, as `fleet-harness run` takes it."""
    source: str
    """Where the failure mode is documented (seed and section)."""
    summary: str
    shape: Shape
    steps: Steps
    checks: Sequence[Checker]
    mutant: str | None = None
    backends: frozenset[str] = frozenset({"sim", "local"})
    """The backends the catalogue lists for it."""
    waiting: Mapping[str, str] = field(default_factory=dict)
    """Backends among `backends` it does not run on yet, each with the reason (the issue
    that brings it, or why it cannot exist on this machine)."""

    @property
    def runs_on(self) -> frozenset[str]:
        """The backends its steps are written for (listed and not waiting)."""
        return self.backends - set(self.waiting)

    def __post_init__(self) -> None:
        from .mutants import MUTANTS

        if self.mutant is not None and self.mutant not in MUTANTS:
            raise ValueError(f"scenario {self.id}: unknown mutant {self.mutant!r}")
