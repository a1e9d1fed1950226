"""The CP sees each agent's clock skew (issue 9 #13): `sentAt` in the checkin minus the
instant it arrived, in `/v1/hosts` (`clockSkewSecs`), in `/metrics` and in one warning
line per host (rate-limited) while it is off by more than 60 s."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fleet_sim.fleetgen import fake_closure
from harness.cpenv import (
    CpEnv,
    MakeEnv,
    assert_clean_log,
    checkin_body,
    curl,
    declared,
    post,
)
from harness.pki import AgentCert
from nixfleet.core.timeutil import format_instant

WARNING = re.compile(r"clock skew: agent clock is 60\d s behind the control plane's; .* host=h1$")


def checkin(env: CpEnv, cert: AgentCert, offset: timedelta | None) -> None:
    extra = {} if offset is None else {"sentAt": format_instant(datetime.now(UTC) + offset)}
    reply = post(env, "/v1/agent/checkin", checkin_body("h1", fake_closure("h1", 0), **extra),
                 cert=cert)  # fmt: skip
    assert reply.status == 200, reply


def skew(env: CpEnv) -> object:
    reply = curl(env.curl("/v1/hosts", cert=env.operator()))
    assert reply.status == 200, reply
    [h1] = [h for h in reply.json()["hosts"] if h["hostname"] == "h1"]
    return h1["clockSkewSecs"]


def test_a_slow_agent_clock_is_visible_and_warned_about_once(make_env: MakeEnv) -> None:
    env = make_env(declared("h1"))
    env.publish()
    cp = env.start()
    cert = env.agent("h1")

    for _ in range(3):
        checkin(env, cert, -timedelta(seconds=600))
    assert skew(env) in (-601, -600, -599)
    metrics = curl(env.curl("/metrics", cert=env.operator()))
    assert metrics.status == 200, metrics
    [sample] = [ln for ln in metrics.body.splitlines() if ln.startswith("nixfleet_agent_clock_")]
    assert sample.startswith('nixfleet_agent_clock_skew_seconds{host="h1"} -')
    assert -601 <= float(sample.split()[-1]) <= -599
    warned = [ln for ln in cp.log().splitlines() if "clock skew:" in ln]
    assert len(warned) == 1 and WARNING.search(warned[0]), warned  # not once per checkin

    # Fixed: said once; an agent that sends no sentAt (an older one) shows null.
    checkin(env, cert, timedelta(0))
    cp.wait_log(r"clock skew: agent clock is right again skew_secs=-?[01] host=h1$")
    assert skew(env) in (-1, 0, 1)
    checkin(env, cert, None)
    assert skew(env) is None
    assert_clean_log(cp)
