"""The channel-refs upstream behind a private CA (seed 000 "Forgejo poll fails with TLS
handshake error") and the stair-step rule (seed 000 "CP stair-steps backwards"),
against the real CP process and an HTTPS forge with its own CA."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from harness.cpenv import (
    CpEnv,
    CpProcess,
    MakeEnv,
    channel_signed_at,
    curl,
    declared,
    sh,
    signed_at_of,
)

RETAIN = "channel-refs: forgejo poll failed; retaining previous cache: "
PRIMED = "primed verified-fleet from channel-refs source before opening listener"
TRUST_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR")


def two_releases(env: CpEnv) -> tuple[str, str, tuple[Path, Path]]:
    """An older release as the build-time artifact, a newer one on the forge."""
    old_raw, old_sig = env.publish(signed_at=datetime.now(UTC) - timedelta(hours=1))
    build_time = env.write_build_time(old_raw, old_sig)
    new_raw, _ = env.publish()
    return signed_at_of(old_raw), signed_at_of(new_raw), build_time


def retain_lines(cp: CpProcess) -> list[str]:
    return [ln for ln in cp.lines(RETAIN) if ln.split(RETAIN, 1)[1].strip()]


def test_private_forge_ca_untrusted_then_trusted(make_env: MakeEnv) -> None:
    env = make_env(declared("h1"))
    old, new, build_time = two_releases(env)
    op = env.operator()

    # Not trusted, no fallback: the poll fails with the reason, /v1/* stays 503.
    cp = env.start(env.args(upstream_ca=False), env_remove=TRUST_ENV)
    line = retain_lines(cp)[0]
    assert "certificate" in line.lower(), line
    reply = curl(env.curl("/v1/channels/stable", "-i", cert=op))
    assert reply.status == 503
    assert "retry-after: 30" in reply.body.lower()
    assert curl(env.curl("/healthz")).status == 200
    cp.stop()

    # Not trusted, with the build-time artifact: the CP falls back to it.
    cp = env.start(env.args(upstream_ca=False, build_time=build_time), env_remove=TRUST_ENV)
    assert retain_lines(cp)
    assert channel_signed_at(env) == old
    assert PRIMED not in cp.log()
    cp.stop()

    # The forge CA in the trust store via SSL_CERT_FILE: primed from the forge.
    cp = env.start(
        env.args(upstream_ca=False, build_time=build_time),
        env={"SSL_CERT_FILE": str(env.forge.ca_cert)} if env.forge else {},
        env_remove=TRUST_ENV,
    )
    assert PRIMED in cp.log()
    assert not cp.lines(RETAIN)
    assert channel_signed_at(env) == new
    cp.stop()

    # ... or via --upstream-ca.
    cp = env.start(env.args(build_time=build_time), env_remove=TRUST_ENV)
    assert PRIMED in cp.log()
    assert channel_signed_at(env) == new


def test_stale_build_time_never_replaces_newer_snapshot(make_env: MakeEnv) -> None:
    env = make_env(declared("h1"))
    old, new, build_time = two_releases(env)
    assert env.forge is not None
    args = env.args(build_time=build_time)
    for restart in range(5):
        forge_down = restart % 2 == 1
        if forge_down:
            env.forge.fail()
        else:
            env.forge.heal()
        if restart == 3:  # forge down *and* the DB wiped (seed 001 step 2)
            sh("rm -rf state.db state.db-wal state.db-shm", cwd=env.state_dir)
        cp = env.start(args)
        assert channel_signed_at(env) == new, f"restart {restart}"
        assert bool(cp.lines(RETAIN)) == forge_down
        # Every tick re-offers the build-time artifact; it is refused as older.
        cp.wait_log(r"channel-refs: keeping newer snapshot .* build-time artifact")
        assert channel_signed_at(env) == new, f"restart {restart}, after a tick"
        assert cp.stop() == 0
    assert old < new


def test_tampered_snapshot_cache_is_refused(make_env: MakeEnv) -> None:
    """The cache is no trust root: its signature is checked again on every start."""
    env = make_env(declared("h1"))
    old, new, build_time = two_releases(env)
    assert env.forge is not None
    args = env.args(build_time=build_time)
    cp = env.start(args)
    assert channel_signed_at(env) == new
    cp.stop()
    cache = env.state_dir / "verified-fleet.json"
    doc = json.loads(cache.read_text())
    artifact = base64.b64decode(doc["artifact"]).replace(b'"h1"', b'"h9"')
    doc["artifact"] = base64.b64encode(artifact).decode()
    cache.write_text(json.dumps(doc))

    env.forge.fail()
    cp = env.start(args)
    assert cp.lines("channel-refs: snapshot cache"), cp.log()
    assert channel_signed_at(env) == old
