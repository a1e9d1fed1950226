"""Health probes (lifecycle §5.11): config parsing, and http / tcp / exec probes against
real listeners on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from agent_testlib import free_port
from aiohttp import web

from nixfleet.agent.health import (
    MAX_REASON_CHARS,
    MIN_INTERVAL_SECS,
    HealthMonitor,
    load_health_config,
    parse_health_config,
)
from nixfleet.core.errors import BadInput, ParseError
from nixfleet.core.wire import PROBE_FAIL, PROBE_PASS, PROBE_UNKNOWN


def clock() -> datetime:
    return datetime.now(UTC)


def test_defaults_and_floor() -> None:
    cfg = parse_health_config(
        {
            "http": [{"name": "web", "url": "http://127.0.0.1:1/"}],
            "tcp": [{"name": "ssh", "port": 22, "intervalSeconds": 1}],
            "exec": [{"name": "true", "command": ["true"]}],
        }
    )
    assert cfg.mode == "enforce"
    web_, ssh, true = cfg.probes
    assert (web_.kind, web_.expect_status, web_.interval_secs, web_.timeout_secs) == (
        "http", 200, 30.0, 5.0,
    )  # fmt: skip
    assert (ssh.host, ssh.port, ssh.interval_secs) == ("127.0.0.1", 22, MIN_INTERVAL_SECS)
    assert (true.command, true.timeout_secs) == (("true",), 10.0)


@pytest.mark.parametrize(
    "doc",
    [
        {"mode": "sometimes"},
        {"http": [{"name": "x"}]},
        {"tcp": [{"name": "x", "port": 70000}]},
        {"exec": [{"name": "x", "command": []}]},
        {"exec": [{"name": "x", "command": ["a"], "timeoutSeconds": -1}]},
        {"tcp": [{"name": "x", "port": 1}], "exec": [{"name": "x", "command": ["a"]}]},
        [],
    ],
)
def test_bad_config_is_refused(doc: object) -> None:
    with pytest.raises(ParseError):
        parse_health_config(doc)


def test_config_file(tmp_path: Path) -> None:
    assert load_health_config(tmp_path / "missing.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(BadInput, match=r"^health checks config .*bad.json: not JSON"):
        load_health_config(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"mode": "permissive", "tcp": [{"name": "t", "port": 1}]}))
    cfg = load_health_config(good)
    assert cfg is not None and cfg.mode == "permissive"


async def test_probes_pass_and_fail(tmp_path: Path) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/broken", broken)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    closed = free_port()
    try:
        cfg = parse_health_config(
            {
                "mode": "enforce",
                "http": [
                    {"name": "h-ok", "url": f"http://127.0.0.1:{port}/ok"},
                    {"name": "h-bad", "url": f"http://127.0.0.1:{port}/broken"},
                ],
                "tcp": [
                    {"name": "t-ok", "port": port},
                    {"name": "t-bad", "port": closed, "timeoutSeconds": 1},
                ],
                "exec": [
                    {"name": "e-ok", "command": ["true"]},
                    {"name": "e-bad", "command": ["sh", "-c", "echo nope >&2; exit 4"]},
                    {"name": "e-slow", "command": ["sleep", "5"], "timeoutSeconds": 0.2},
                    {
                        "name": "e-long",
                        "command": ["sh", "-c", "printf 'x%.0s' $(seq 900) >&2; exit 1"],
                    },
                ],
            }
        )
        monitor = HealthMonitor(cfg, clock)
        assert {p.status for p in monitor.snapshot()} == {PROBE_UNKNOWN}
        results = {p.name: await monitor.run_once(p) for p in cfg.probes}
    finally:
        await runner.cleanup()
    assert {n for n, r in results.items() if r.status == PROBE_PASS} == {"h-ok", "t-ok", "e-ok"}
    assert all(r.status == PROBE_FAIL for n, r in results.items() if not n.endswith("ok"))
    assert results["h-bad"].failure_reason == "HTTP 500, expected 200"
    assert results["e-bad"].failure_reason == "exit 4: nope"
    assert results["e-slow"].failure_reason == "timed out after 0.2 s"
    assert len(results["e-long"].failure_reason or "") == MAX_REASON_CHARS
    # lastPassAt survives a later failure.
    ok = cfg.probes[0]
    passed_at = results["h-ok"].last_pass_at
    again = monitor.record(ok, "HTTP 503, expected 200", clock())
    assert again.status == PROBE_FAIL and again.last_pass_at == passed_at


async def test_scheduler_runs_at_start_and_stops() -> None:
    cfg = parse_health_config({"mode": "permissive", "exec": [{"name": "e", "command": ["true"]}]})
    monitor = HealthMonitor(cfg, clock)
    await monitor.start()
    try:
        for _ in range(200):
            if monitor.snapshot()[0].status == PROBE_PASS:
                break
            await asyncio.sleep(0.02)
    finally:
        await monitor.stop()
    assert monitor.snapshot()[0].status == PROBE_PASS
    assert monitor.mode == "permissive"
    disabled = HealthMonitor(parse_health_config({"mode": "disabled"}), clock)
    await disabled.start()
    await disabled.stop()
    assert HealthMonitor(None, clock).mode is None
