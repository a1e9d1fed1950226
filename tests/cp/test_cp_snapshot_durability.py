"""A snapshot is served only once it is durably recorded (issue 9 #3), and readiness says
what it waits for (issue 9 #9), against the real CP process and its HTTPS forge.

Before the fix a newer release that could not be written to the snapshot cache (a full
disk) was served from memory; a restart with the forge down then served the recorded,
older one: the seed-000 stair-step by another road."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

from harness.cpenv import (
    CpEnv,
    MakeEnv,
    channel_signed_at,
    curl,
    declared,
    signed_at_of,
    wait_until,
)


def health(env: CpEnv) -> dict[str, object]:
    reply = curl(env.curl("/healthz"))
    assert reply.status == 200, reply
    doc: dict[str, object] = reply.json()
    return doc


def test_unrecordable_snapshot_is_never_served(make_env: MakeEnv) -> None:
    env = make_env(declared("h1"))
    r1 = signed_at_of(env.publish(signed_at=datetime.now(UTC) - timedelta(hours=1))[0])
    cp = env.start()
    served = [channel_signed_at(env)]
    assert served == [r1]
    cache = env.state_dir / "verified-fleet.json"
    assert cache.exists()

    # The cache cannot be written any more (its temp file's name is taken by a
    # directory: the write fails as on a full disk). A newer release is refused.
    blocker = env.state_dir / "verified-fleet.json.tmp"
    blocker.mkdir()
    r2 = signed_at_of(env.publish()[0])
    cp.wait_log(rf"channel-refs: refusing newer snapshot signed_at={r2} \(cannot record")
    served.append(channel_signed_at(env))
    assert served[-1] == r1, served
    doc = health(env)
    assert doc["ready"] is True and doc["awaiting"] is None
    assert doc["refused_snapshot"] == {
        "signed_at": r2,
        "reason": doc["refused_snapshot"]["reason"],  # type: ignore[index]
    }
    assert "cannot record" in str(doc["refused_snapshot"])
    # Said once, not on every poll (the forge is polled every 2 s).
    ticks = len(cp.lines("tick verify_ok"))
    wait_until(lambda: len(cp.lines("tick verify_ok")) >= ticks + 5, 15, "five more ticks")
    assert len(cp.lines("refusing newer snapshot")) == 1

    # Once it can be recorded, the next poll adopts it.
    blocker.rmdir()
    wait_until(lambda: channel_signed_at(env) == r2, 15, "newer snapshot adopted")
    served.append(r2)
    assert "refused_snapshot" not in health(env)
    recorded = base64.b64decode(json.loads(cache.read_bytes())["artifact"])
    assert signed_at_of(recorded) == r2

    # SIGKILL, forge down, restart: the recorded newer snapshot, never the older one.
    cp.kill9()
    assert env.forge is not None
    env.forge.stop()
    env.start()
    served.append(channel_signed_at(env))
    assert served == [r1, r1, r2, r2], served


def test_readiness_says_what_it_awaits(make_env: MakeEnv) -> None:
    env = make_env(declared("h1"))
    env.publish()
    op = env.operator()
    cp = env.start(env.args(revocations=True))

    # Live, not ready: /healthz is 200 with the reason, /readyz and /v1 are 503 with it.
    doc = health(env)
    assert doc["ok"] is True and doc["ready"] is False
    assert "revocations" in str(doc["awaiting"]), doc
    ready = curl(env.curl("/readyz"))
    assert ready.status == 503 and "revocations" in ready.json()["reason"], ready
    v1 = curl(env.curl("/v1/channels/stable", cert=op))
    assert v1.status == 503 and "revocations" in v1.json()["reason"], v1
    assert "awaiting first signed artifact" not in cp.log()

    env.publish_revocations({})
    cp.wait_log("control plane ready")
    assert curl(env.curl("/readyz")).status == 200
    assert health(env)["ready"] is True
    assert curl(env.curl("/v1/channels/stable", cert=op)).status == 200
