"""Hostile input against ONE live CP process (issue 9, acceptance: the bad-input suite).

tests/cp/test_cp_bad_input.py checks each documented refusal once on a fresh CP. This
suite throws a table of distinct malformed, oversized, misrouted and hostile requests
at a single long-lived CP: every route × every method, malformed HTTP on raw TLS
sockets, hostile bodies and identities, dropped, half-open and drip-fed connections.
After EACH case it checks what holds whatever the case was:

- the status is one decisions.md names for it (0 = no HTTP response), never a 5xx;
- the CP log gained no traceback, no aiohttp "Error handling request" or "Unhandled
  exception", and no line that does not start with a timestamp (a value carrying a
  newline forged a line);
- `/healthz` still answers 200;
- the DB is unchanged: every table's row count and the pending_confirms and
  host_rollout_state rows themselves (a wrongly accepted confirm flips a state
  without adding a row).

Each case names the issue-9 item whose fix it needs (`item`, 0 when none), so a
failure reads "needs issue 9 item N" when the defect is still open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import re
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleet_sim.fleetgen import fake_closure
from harness.cpenv import (
    CpEnv,
    CpProcess,
    aio_post,
    checkin_body,
    confirm_body,
    declared,
    enroll_body,
    sqlite3,
    table_counts,
    wait_until,
)
from harness.pki import AgentCert, CertPaths
from nixfleet.core.canonical import canonical_bytes
from nixfleet.core.signing import sign

Identity = CertPaths | AgentCert | None
Body = bytes | Callable[["Live"], Any] | Any
Send = Callable[["Live"], Awaitable[int]]

NO_RESPONSE = 0
TIMEOUT = 20.0
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
BIG = 100_000
"""A "100 KB" value."""
ROGUE_ROLLOUT = "ab" * 32


# --- the live CP ----------------------------------------------------------------------


@dataclass
class Live:
    env: CpEnv
    cp: CpProcess
    ids: dict[str, Identity]
    rollout: str
    targets: dict[str, str]
    baseline: dict[str, Any]
    offset: int = 0
    last_case: str = "setup"

    def context(self, who: str) -> ssl.SSLContext:
        return self.env.pki.client_context(self.ids[who])

    def take_log(self) -> str:
        text = self.cp.log()
        new, self.offset = text[self.offset :], len(text)
        return new


def db_state(db: Path) -> dict[str, Any]:
    return {
        "counts": table_counts(db),
        "pending_confirms": sqlite3(
            db,
            "SELECT id, hostname, rollout_id, wave, target_closure_hash, state, confirmed_at, "
            "terminal_state FROM pending_confirms ORDER BY id;",
        ),
        "host_rollout_state": sqlite3(
            db, "SELECT rollout_id, hostname, host_state FROM host_rollout_state ORDER BY 1, 2;"
        ),
    }


async def healthz(live: Live) -> int:
    return await request(live, "GET", "/healthz", "none")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, operator_tools: None) -> Iterator[Live]:
    """One CP with state worth losing: a pending dispatch (h1), a confirmed one (h2),
    an enrolment (h3), and an operator revocation (gone)."""
    env = CpEnv.create(tmp_path_factory.mktemp("hostile"), declared("h1", "h2", "h3", "gone"))
    try:
        yield asyncio.run(_setup(env))
    finally:
        env.close()


async def _setup(env: CpEnv) -> Live:
    raw, _sig = env.publish()
    (rid, _body, _msig) = env.kit.sign_manifests(raw)["stable"]
    now = datetime.now(UTC)
    ids: dict[str, Identity] = {
        "none": None,
        "h1": env.agent("h1"),
        "h2": env.agent("h2"),
        "op": env.operator(),
        "foreign": env.pki.issue_agent("h2", by_other_ca=True),
        "foreign_op": env.pki.issue_operator("mallory", by_other_ca=True),
        "gone": env.pki.issue_agent("gone", now=now - timedelta(minutes=5)),
        "stray": env.pki.issue_agent("stray"),
        "expired": env.pki.issue_agent("h3", now=now - timedelta(hours=3), validity_secs=3600),
    }
    cp = env.start()
    cp.wait_log("reconcile: open_rollout")
    targets = {}
    for host in ("h1", "h2"):
        status, reply = await aio_post(
            env, "/v1/agent/checkin", checkin_body(host, fake_closure(host, 0)), identity=ids[host]
        )
        assert status == 200 and reply["target"]["rolloutId"] == rid, reply
        targets[host] = reply["target"]["closureHash"]
    status, _ = await aio_post(
        env, "/v1/agent/confirm", confirm_body("h2", rid, targets["h2"]), identity=ids["h2"]
    )
    assert status == 204
    status, issued = await aio_post(env, "/v1/enroll", enroll_body(env, "h3"))
    assert status == 200, issued
    sqlite3(
        env.db_path,
        "INSERT INTO cert_revocations (hostname, not_before, reason, revoked_by) "
        "VALUES ('gone', datetime('now'), 'compromised', 'me');",
    )

    # Let the tick settle what it derives from that (soak, waves) before the baseline.
    def settled() -> dict[str, Any] | None:
        first = db_state(env.db_path)
        cp.wait_log(r"tick verify_ok", timeout=5)
        ticks = len(cp.lines("tick verify_ok"))
        wait_until(lambda: len(cp.lines("tick verify_ok")) >= ticks + 2, 10, "two more ticks")
        return first if db_state(env.db_path) == first else None

    baseline = wait_until(settled, 30, "DB state settled")
    live = Live(env=env, cp=cp, ids=ids, rollout=rid, targets=targets, baseline=baseline)
    live.take_log()
    return live


# --- how cases send -----------------------------------------------------------------


def _payload(live: Live, body: Body) -> bytes | None:
    value = body(live) if callable(body) else body
    if value is None or isinstance(value, bytes):
        return value
    return json.dumps(value).encode()


async def request(
    live: Live,
    method: str,
    path: str,
    who: str,
    body: Body = None,
    headers: Mapping[str, str] | None = None,
) -> int:
    """One request with aiohttp; NO_RESPONSE if no HTTP response came back."""
    data = _payload(live, body)
    hdrs = {"X-Nixfleet-Protocol": "1"}
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    url = live.env.url(path.format(rid=live.rollout))
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                url,
                data=data,
                headers=hdrs,
                ssl=live.context(who),
                timeout=aiohttp.ClientTimeout(total=TIMEOUT),
                skip_auto_headers=("Content-Type",) if data is None else (),
            ) as resp,
        ):
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, ssl.SSLError, ConnectionError):
        return NO_RESPONSE


def http(
    method: str,
    path: str,
    who: str = "none",
    body: Body = None,
    headers: Mapping[str, str] | None = None,
) -> Send:
    async def send(live: Live) -> int:
        return await request(live, method, path, who, body, headers)

    return send


async def _open(live: Live, who: str | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection: TLS presenting `who`'s cert, or plain TCP for `who=None`."""
    ctx = live.context(who) if who is not None else None
    return await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1",
            live.env.port,
            ssl=ctx,
            server_hostname="localhost" if ctx is not None else None,
        ),
        TIMEOUT,
    )


async def _status_line(reader: asyncio.StreamReader) -> int:
    line = await asyncio.wait_for(reader.readline(), TIMEOUT)
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", line)
    return int(m.group(1)) if m else NO_RESPONSE


async def _hold(live: Live, secs: float, what: str) -> None:
    """Keep a hostile connection open for `secs`; others must be served meanwhile."""
    await asyncio.sleep(secs / 2)
    status = await healthz(live)
    assert status == 200, f"/healthz answered {status} while {what}"
    await asyncio.sleep(secs / 2)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def raw(
    *chunks: bytes,
    who: str | None = "none",
    pause: float = 0.0,
    hold: float = 0.0,
    read: bool = True,
    reset: bool = False,
) -> Send:
    """Send bytes on a raw (TLS unless `who=None`) socket; the status of the reply.

    `pause` between chunks (drip feed), `hold` the connection open afterwards while
    /healthz is checked, `read=False` drops the connection without reading (with
    `reset`, by a TCP RST instead of a TLS close)."""

    async def send(live: Live) -> int:
        try:
            reader, writer = await _open(live, who)
        except (OSError, ssl.SSLError, TimeoutError):
            return NO_RESPONSE
        try:
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                if pause:
                    await asyncio.sleep(pause)
            if hold:
                await _hold(live, hold, f"a connection sent {len(b''.join(chunks))} bytes")
            if not read:
                return NO_RESPONSE
            return await _status_line(reader)
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError):
            return NO_RESPONSE
        finally:
            if reset:
                _reset(writer)
            else:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                    await asyncio.wait_for(writer.wait_closed(), 5)

    return send


def many_connections(n: int, hold: float) -> Send:
    """`n` idle TLS connections from one peer at once; others are served meanwhile."""

    async def send(live: Live) -> int:
        opened = await asyncio.gather(
            *(_open(live, "h1") for _ in range(n)), return_exceptions=True
        )
        try:
            await _hold(live, hold, f"{n} idle connections were open")
        finally:
            for conn in opened:
                if isinstance(conn, tuple):
                    conn[1].transport.abort()
        return NO_RESPONSE

    return send


def http_request(
    method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes = b""
) -> bytes:
    """Raw HTTP/1.1 request bytes with Host and Connection: close unless overridden."""
    hdrs = {"Host": "localhost", "Connection": "close", **(headers or {})}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in hdrs.items() if v is not None
    )
    return head.encode("latin-1") + b"\r\n" + body


# --- the cases ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    send: Send
    expect: frozenset[int]
    item: int = 0
    """The issue-9 item whose fix this case needs (0: should hold already)."""
    settle: float = 0.0
    """Seconds to let the CP notice a dropped connection before the checks."""


CASES: list[Case] = []


def case(id: str, send: Send, *expect: int, item: int = 0, settle: float = 0.0) -> None:
    CASES.append(Case(id, send, frozenset(expect), item, settle))


# Every route × every method, each route with the identity it is meant for; a POST
# route gets an empty body (400), a method the route does not have 405.
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
ROUTES: list[tuple[str, str, str, int, int]] = [
    # (path, identity, method the route has, its status, item)
    ("/healthz", "none", "GET", 200, 0),
    ("/readyz", "none", "GET", 200, 9),
    ("/v1/enroll", "none", "POST", 400, 0),
    ("/v1/agent/renew", "h1", "POST", 400, 0),
    ("/v1/whoami", "h1", "GET", 200, 0),
    ("/v1/agent/checkin", "h1", "POST", 400, 0),
    ("/v1/agent/confirm", "h1", "POST", 400, 0),
    ("/v1/agent/report", "h1", "POST", 400, 0),
    ("/v1/channels/x", "op", "GET", 404, 0),
    ("/v1/hosts", "op", "GET", 200, 0),
    ("/v1/rollouts", "op", "GET", 200, 0),
    ("/v1/rollouts/{rid}", "h1", "GET", 200, 0),
    ("/v1/rollouts/{rid}/sig", "h1", "GET", 200, 0),
    ("/metrics", "op", "GET", 200, 0),
    ("/nope", "none", "", 404, 0),
    ("/v1/nope", "h1", "", 404, 0),
]
for _path, _who, _has, _status, _item in ROUTES:
    for _m in METHODS:
        _served = not _has or _m == _has or (_m == "HEAD" and _has == "GET")
        case(
            f"route-{_path.replace('{rid}', 'ID').strip('/').replace('/', '-')}-{_m}",
            http(_m, _path, _who, b"" if _m == "POST" else None),
            _status if _served else 405,
            item=_item,
        )

PROTO = "X-Nixfleet-Protocol"

# --- header cases (raw sockets) ---
case(
    "hdr-64k-header", raw(http_request("GET", "/healthz", {"X-Pad": "a" * 65536})), 400, 431, item=7
)
case(
    "hdr-missing-host", raw(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"), 200, 400, item=7
)
case(
    "hdr-missing-host-enroll",
    raw(b"POST /v1/enroll HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"),
    400,
    item=7,
)
case(
    "hdr-chunked-and-content-length",
    raw(
        http_request(
            "POST",
            "/v1/enroll",
            {"Transfer-Encoding": "chunked", "Content-Length": "5"},
            b"2\r\n{}\r\n0\r\n\r\n",
        )
    ),
    400,
    item=7,
)
case(
    "hdr-content-length-text",
    raw(http_request("POST", "/v1/enroll", {"Content-Length": "abc"}, b"{}")),
    400,
    item=7,
)
case(
    "hdr-content-length-negative",
    raw(http_request("POST", "/v1/enroll", {"Content-Length": "-2"}, b"{}")),
    400,
    item=7,
)
case(
    "hdr-content-length-twice",
    raw(
        b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n"
        b"Connection: close\r\n\r\n{}x"
    ),
    400,
    item=7,
)
case(
    "hdr-content-length-huge-then-close",
    raw(http_request("POST", "/v1/enroll", {"Content-Length": "99999999999"}, b"{"), read=False),
    NO_RESPONSE,
    item=7,
    settle=0.5,
)
case(
    "hdr-transfer-encoding-bogus",
    raw(http_request("POST", "/v1/enroll", {"Transfer-Encoding": "bogus"}, b"{}")),
    400,
    item=7,
)
case(
    "hdr-bad-chunk-size",
    raw(http_request("POST", "/v1/enroll", {"Transfer-Encoding": "chunked"}, b"zz\r\n{}\r\n")),
    400,
    item=7,
)
case(
    "hdr-line-without-colon",
    raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nnonsense\r\n\r\n"),
    400,
    item=7,
)
case(
    "hdr-space-in-name",
    raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n"),
    400,
    item=7,
)
case(
    "hdr-nul-in-value", raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"), 400, item=7
)
case(
    "hdr-1000-headers",
    raw(http_request("GET", "/healthz", {f"X-H{i}": "1" for i in range(1000)})),
    200,
    400,
    431,
    item=7,
)
case(
    "hdr-obs-fold",
    raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\nConnection: close\r\n\r\n"),
    200,
    400,
    item=7,
)
case("hdr-8k-host", raw(http_request("GET", "/healthz", {"Host": "h" * 8000})), 200, 400, 431)
case("hdr-absolute-uri", raw(http_request("GET", "https://evil.example/healthz")), 200, 400, 404)
case("hdr-http-1.0-no-host", raw(b"GET /healthz HTTP/1.0\r\n\r\n"), 200)
case(
    "hdr-http-version-9", raw(b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n"), 400, NO_RESPONSE, item=7
)
case("hdr-http2-preface", raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 400, NO_RESPONSE, item=7)
case("hdr-method-bad-chars", raw(b"G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), 400)
case("hdr-method-unknown", raw(http_request("FROB", "/healthz")), 400, 405)
case(
    "hdr-expect-bogus",
    raw(http_request("POST", "/v1/enroll", {"Expect": "bogus", "Content-Length": "2"}, b"{}")),
    400,
    417,
)
case(
    "hdr-header-injection-crlf-path",
    raw(b"GET /healthz\r\nX-Injected: 1 HTTP/1.1\r\nHost: x\r\n\r\n"),
    400,
    NO_RESPONSE,
)
for _value, _want, _item in (
    ("", 400, 0),
    ("1.0", 400, 0),
    ("0", 426, 0),
    ("-1", 426, 0),
    ("99999999999999999999", 426, 0),
    ("1" * 4400, 400, 0),
    ("x" * 7000, 400, 0),
):
    case(
        f"hdr-protocol-{_value[:12] or 'empty'}{'-long' if len(_value) > 12 else ''}",
        http("GET", "/v1/whoami", "h1", headers={PROTO: _value}),
        _want,
        item=_item,
    )
case(
    "hdr-protocol-2-anonymous-enroll", http("POST", "/v1/enroll", "none", b"{}", {PROTO: "2"}), 426
)
case(
    "hdr-gzip-garbage",
    http("POST", "/v1/agent/checkin", "h1", b"not gzip at all", {"Content-Encoding": "gzip"}),
    400,
    item=7,
)
case(
    "hdr-gzip-bomb",
    http(
        "POST",
        "/v1/agent/checkin",
        "h1",
        lambda _live: gzip.compress(b'{"pad": "' + b"0" * 20_000_000 + b'"}'),
        {"Content-Encoding": "gzip"},
    ),
    400,
    413,
)


# --- body cases ---
def _h1_checkin(**over: Any) -> Callable[[Live], Any]:
    return lambda live: {**checkin_body("h1", fake_closure("h1", 0)), **over}


def _h1_gen(closure: str, boot: str = "b") -> Callable[[Live], Any]:
    return _h1_checkin(currentGeneration={"closureHash": closure, "bootId": boot})


def _confirm(who: str = "h1", **over: Any) -> Callable[[Live], Any]:
    def body(live: Live) -> Any:
        return {**confirm_body(who, live.rollout, live.targets[who]), **over}

    return body


def _report(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "hostname": "h1",
        "agentVersion": "t",
        "occurredAt": "2026-01-01T00:00:00Z",
        "rollout": None,
        "event": "activation-failed",
        "details": {},
    }
    return {**base, **over}


def hostile_enroll(live: Live, hostname: str) -> dict[str, Any]:
    """A token validly signed by the org root key for a hostname no `mint-token` would
    accept (a CA-side mistake or a stolen key), with h9's CSR."""
    body = enroll_body(live.env, "h9")
    claims = {**body["token"]["claims"], "hostname": hostname}
    message = canonical_bytes(claims, source="token claims")
    signature = base64.b64encode(sign(live.env.kit.org_root_key, message)).decode()
    return {**body, "token": {**body["token"], "claims": claims, "signature": signature}}


POSTS = {
    "enroll": ("/v1/enroll", "none"),
    "renew": ("/v1/agent/renew", "h1"),
    "checkin": ("/v1/agent/checkin", "h1"),
    "confirm": ("/v1/agent/confirm", "h1"),
    "report": ("/v1/agent/report", "h1"),
}
WRONG_TYPES: dict[str, Body] = {
    "enroll": {"token": 5, "csrPem": []},
    "renew": {"csrPem": 7},
    "checkin": _h1_checkin(hostname=["h1"]),
    "confirm": _confirm(wave="0"),
    "report": _report(event=5),
}
for _name, (_path, _who) in POSTS.items():
    case(f"body-{_name}-binary-garbage", http("POST", _path, _who, b"\xff\xfe\x00{"), 400)
    case(
        f"body-{_name}-deep-objects",
        http("POST", _path, _who, b'{"a":' * 5000 + b"1" + b"}" * 5000),
        400,
    )
    case(f"body-{_name}-null", http("POST", _path, _who, b"null"), 400)
    case(f"body-{_name}-wrong-types", http("POST", _path, _who, WRONG_TYPES[_name]), 400)
    case(
        f"body-{_name}-2mb",
        http("POST", _path, _who, lambda _live: b'{"pad": "' + b"x" * 2_000_000 + b'"}'),
        413,
    )

case(
    "body-checkin-nan",
    http("POST", "/v1/agent/checkin", "h1", _h1_checkin(uptimeSecs=float("nan"))),
    400,
)
case(
    "body-checkin-uptime-1e30",
    http("POST", "/v1/agent/checkin", "h1", _h1_checkin(uptimeSecs=10**30)),
    200,
    400,
)
case(
    "body-checkin-closure-dotdot",
    http("POST", "/v1/agent/checkin", "h1", _h1_gen("../../etc/passwd")),
    400,
    item=4,
)
case(
    "body-checkin-closure-100k",
    http("POST", "/v1/agent/checkin", "h1", _h1_gen("a" * BIG)),
    400,
    item=4,
)
case(
    "body-checkin-closure-newline",
    http(
        "POST",
        "/v1/agent/checkin",
        "h1",
        _h1_gen(
            fake_closure("h1", 0)
            + "\n2026-01-01T00:00:00.000Z INFO nixfleet.cp: checkin received h2"
        ),
    ),
    400,
    item=4,
)
case(
    "body-checkin-closure-no-hash",
    http("POST", "/v1/agent/checkin", "h1", _h1_gen("nixos-system-h1")),
    400,
    item=4,
)
case(
    "body-checkin-closure-upper",
    http("POST", "/v1/agent/checkin", "h1", _h1_gen("E" * 32 + "-x")),
    400,
    item=4,
)
case(
    "body-checkin-bootid-100k",
    http("POST", "/v1/agent/checkin", "h1", _h1_gen(fake_closure("h1", 0), "b" * BIG)),
    400,
    item=4,
)
case(
    "body-checkin-bootid-escape",
    http("POST", "/v1/agent/checkin", "h1", _h1_gen(fake_closure("h1", 0), "\x1b[2J\r")),
    400,
    item=4,
)
case(
    "body-checkin-hostname-100k",
    http("POST", "/v1/agent/checkin", "h1", _h1_checkin(hostname="h" * BIG)),
    400,
    403,
)
case(
    "body-checkin-hostname-newline",
    http("POST", "/v1/agent/checkin", "h1", _h1_checkin(hostname="h1\nh2")),
    400,
    403,
)
case(
    "body-checkin-agentversion-100k",
    http("POST", "/v1/agent/checkin", "h1", _h1_checkin(agentVersion="v" * BIG)),
    400,
    item=4,
)

# A confirm must match the dispatch it confirms (item 1): h1's row is pending, h2's confirmed.
case(
    "confirm-wave-minus-1",
    http("POST", "/v1/agent/confirm", "h1", _confirm(wave=-1)),
    400,
    409,
    item=1,
)
case("confirm-wave-7", http("POST", "/v1/agent/confirm", "h1", _confirm(wave=7)), 400, 409, item=1)
case(
    "confirm-wave-400-digits",
    http(
        "POST",
        "/v1/agent/confirm",
        "h1",
        lambda live: (
            json.dumps(_confirm()(live)).replace('"wave": 0', '"wave": ' + "9" * 400).encode()
        ),
    ),
    400,
    409,
    item=1,
)
case(
    "confirm-closure-never-dispatched",
    http(
        "POST",
        "/v1/agent/confirm",
        "h1",
        _confirm(generation={"closureHash": fake_closure("h1", 9), "bootId": "b"}),
    ),
    400,
    409,
    item=1,
)
case(
    "confirm-closure-of-h2",
    http(
        "POST",
        "/v1/agent/confirm",
        "h1",
        lambda live: {
            **_confirm()(live),
            "generation": {"closureHash": live.targets["h2"], "bootId": "b"},
        },
    ),
    400,
    409,
    item=1,
)
case(
    "confirm-closure-dotdot",
    http(
        "POST",
        "/v1/agent/confirm",
        "h1",
        _confirm(generation={"closureHash": "../../etc/passwd", "bootId": "b"}),
    ),
    400,
    409,
    item=1,
)
case(
    "confirm-rollout-unknown",
    http("POST", "/v1/agent/confirm", "h1", _confirm(rollout=ROGUE_ROLLOUT)),
    400,
    404,
    409,
    410,
    item=1,
)
case(
    "confirm-rollout-100k",
    http("POST", "/v1/agent/confirm", "h1", _confirm(rollout="r" * BIG)),
    400,
    409,
    410,
    item=4,
)
case(
    "confirm-rollout-newline",
    http(
        "POST",
        "/v1/agent/confirm",
        "h1",
        lambda live: _confirm(rollout=live.rollout + "\nforged")(live),
    ),
    400,
    409,
    410,
    item=4,
)
case(
    "confirm-confirmed-row-wave-7",
    http("POST", "/v1/agent/confirm", "h2", _confirm("h2", wave=7)),
    400,
    409,
    item=1,
)

case(
    "report-unknown-event",
    http("POST", "/v1/agent/report", "h1", _report(event="pwned")),
    400,
    item=10,
)
case(
    "report-event-newline",
    http("POST", "/v1/agent/report", "h1", _report(event="activation-failed\nforged")),
    400,
    item=10,
)
case(
    "report-details-1mb",
    http("POST", "/v1/agent/report", "h1", lambda _l: _report(details={"blob": "x" * 1_000_000})),
    400,
    413,
    item=10,
)
case("report-details-list", http("POST", "/v1/agent/report", "h1", _report(details=[1, 2])), 400)
case(
    "report-occurred-garbage",
    http("POST", "/v1/agent/report", "h1", _report(occurredAt="yesterday")),
    400,
)
case(
    "report-rollout-100k",
    http("POST", "/v1/agent/report", "h1", _report(rollout="r" * BIG)),
    400,
    item=4,
)
case(
    "report-missing-event",
    http("POST", "/v1/agent/report", "h1", {k: v for k, v in _report().items() if k != "event"}),
    400,
)

case(
    "enroll-token-hostname-dotdot",
    http("POST", "/v1/enroll", "none", lambda live: hostile_enroll(live, "../../etc")),
    400,
    401,
    403,
)
case(
    "enroll-token-hostname-newline",
    http("POST", "/v1/enroll", "none", lambda live: hostile_enroll(live, "h9\nforged")),
    400,
    401,
    403,
)
case(
    "enroll-csr-100k",
    http(
        "POST",
        "/v1/enroll",
        "none",
        lambda live: {**enroll_body(live.env, "h9"), "csrPem": "-" * BIG},
    ),
    400,
)

# --- identity cases ---
for _path in ("/v1/rollouts", "/v1/rollouts/{rid}", "/v1/rollouts/{rid}/sig"):
    case(f"id-no-cert-GET{_path.replace('{rid}', 'ID').replace('/', '-')}", http("GET", _path), 401)
case("id-no-cert-report", http("POST", "/v1/agent/report", "none", _report()), 401)
case("id-foreign-agent-hosts", http("GET", "/v1/hosts", "foreign"), NO_RESPONSE, 401)
case(
    "id-foreign-agent-report",
    http("POST", "/v1/agent/report", "foreign", _report(hostname="h2")),
    NO_RESPONSE,
    401,
)
case("id-foreign-operator-metrics", http("GET", "/metrics", "foreign_op"), NO_RESPONSE, 401)
case(
    "id-expired-agent-checkin",
    http("POST", "/v1/agent/checkin", "expired", checkin_body("h3", fake_closure("h3", 0))),
    NO_RESPONSE,
    401,
)
case(
    "id-h1-checkin-as-H1",
    http("POST", "/v1/agent/checkin", "h1", _h1_checkin(hostname="H1")),
    400,
    403,
)
case(
    "id-h1-checkin-as-cn",
    http("POST", "/v1/agent/checkin", "h1", _h1_checkin(hostname="agent-h1.fleet.test")),
    400,
    403,
)
case("id-h1-report-as-gone", http("POST", "/v1/agent/report", "h1", _report(hostname="gone")), 403)
case("id-h1-confirm-h2-row", http("POST", "/v1/agent/confirm", "h1", _confirm("h2")), 403)
case(
    "id-operator-checkin",
    http("POST", "/v1/agent/checkin", "op", checkin_body("h1", fake_closure("h1", 0))),
    403,
    item=5,
)
case("id-operator-confirm", http("POST", "/v1/agent/confirm", "op", _confirm()), 403, item=5)
case("id-operator-report", http("POST", "/v1/agent/report", "op", _report()), 403, item=5)
case(
    "id-operator-renew",
    http(
        "POST",
        "/v1/agent/renew",
        "op",
        lambda live: {"csrPem": enroll_body(live.env, "h1")["csrPem"]},
    ),
    401,
    403,
    item=5,
)
case("id-agent-reads-hosts", http("GET", "/v1/hosts", "h1"), 403, item=5)
case("id-agent-reads-metrics", http("GET", "/metrics", "h1"), 403, item=5)
case("id-agent-reads-rollouts", http("GET", "/v1/rollouts", "h1"), 403, item=5)
case("id-undeclared-agent-reads-hosts", http("GET", "/v1/hosts", "stray"), 403, item=5)
case("id-revoked-report", http("POST", "/v1/agent/report", "gone", _report(hostname="gone")), 401)
case(
    "id-revoked-confirm", http("POST", "/v1/agent/confirm", "gone", _confirm(hostname="gone")), 401
)
case(
    "id-revoked-renew",
    http(
        "POST",
        "/v1/agent/renew",
        "gone",
        lambda live: {"csrPem": enroll_body(live.env, "gone")["csrPem"]},
    ),
    401,
)
case("id-revoked-manifest", http("GET", "/v1/rollouts/{rid}", "gone"), 401)
case("id-revoked-metrics", http("GET", "/metrics", "gone"), 401)

# --- misrouted (raw, so that no client normalises the path) ---
for _name, _raw_path, _who in (
    ("dot-segments", "/v1/../healthz", "none"),
    ("double-slash", "//v1/hosts", "op"),
    ("trailing-slash", "/v1/hosts/", "op"),
    ("upper-case", "/V1/HOSTS", "op"),
    ("encoded-traversal", "/v1/rollouts/..%2f..%2fetc%2fpasswd", "h1"),
    ("encoded-nul", "/v1/rollouts/%00", "h1"),
    ("6k-channel", "/v1/channels/" + "c" * 6000, "op"),
    ("1500-query-params", "/healthz?" + "q=1&" * 1500, "none"),
):
    case(
        f"path-{_name}",
        raw(http_request("GET", _raw_path), who=_who),
        *(200, 400, 401, 404, 414),
    )

# --- connection cases ---
case("conn-garbage-request-line", raw(b"\x00\x01garbage\xff\r\n\r\n"), 400, NO_RESPONSE, item=7)
case("conn-100k-url", raw(http_request("GET", "/healthz?x=" + "u" * BIG)), 400, 414, item=7)
case(
    "conn-100k-url-v1",
    raw(http_request("GET", "/v1/channels/" + "u" * BIG), who="h1"),
    400,
    414,
    item=7,
)
case(
    "conn-enroll-dropped-mid-body",
    raw(
        http_request("POST", "/v1/enroll", {"Content-Length": "4000"}, b'{"token": {"cl'),
        read=False,
    ),
    NO_RESPONSE,
    item=7,
    settle=0.5,
)
case(
    "conn-checkin-reset-mid-body",
    raw(
        http_request("POST", "/v1/agent/checkin", {"Content-Length": "4000"}, b"{"),
        who="h1",
        read=False,
        reset=True,
    ),
    NO_RESPONSE,
    item=7,
    settle=0.5,
)
case("conn-half-open-tls", raw(hold=2.0, read=False), NO_RESPONSE, item=8, settle=0.3)
case("conn-tcp-no-client-hello", raw(who=None, hold=2.0, read=False), NO_RESPONSE, settle=0.3)
case(
    "conn-partial-client-hello",
    raw(b"\x16\x03\x01\x02\x00\x01", who=None, read=False),
    NO_RESPONSE,
    settle=0.3,
)
case(
    "conn-plain-http-on-tls",
    raw(http_request("GET", "/healthz"), who=None),
    NO_RESPONSE,
    400,
    settle=0.3,
)
case(
    "conn-drip-fed-body",
    raw(
        http_request("POST", "/v1/enroll", {"Content-Length": "200"}),
        *[b"{"] * 20,
        pause=0.1,
        read=False,
    ),
    NO_RESPONSE,
    item=8,
    settle=0.5,
)
case(
    "conn-drip-fed-headers",
    raw(*[bytes([b]) for b in b"GET /healthz HTTP/1.1\r\nHost: local"], pause=0.05, read=False),
    NO_RESPONSE,
    item=8,
    settle=0.5,
)
case(
    "conn-pipelined-garbage",
    raw(
        http_request("GET", "/healthz", {"Connection": "keep-alive"}) + b"\xff\xfe garbage\r\n\r\n"
    ),
    200,
    400,
)
case(
    "conn-reset-after-request",
    raw(http_request("GET", "/metrics"), who="op", read=False, reset=True),
    NO_RESPONSE,
    settle=0.3,
)
case("conn-60-idle-from-one-peer", many_connections(60, 2.0), NO_RESPONSE, item=8, settle=0.5)


# --- the checks -----------------------------------------------------------------------


def log_problems(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        if any(
            bad in line for bad in ("Traceback", "Error handling request", "Unhandled exception")
        ):
            out.append(f"log: {line[:400]}")
        elif not LOG_LINE.match(line):
            out.append(f"log line without a timestamp (forged or multi-line): {line[:200]!r}")
    return out


def test_the_table_has_at_least_80_distinct_cases() -> None:
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)
    assert len(ids) >= 80, len(ids)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_hostile_request(live: Live, case: Case) -> None:
    problems = [f"after case {live.last_case}: {p}" for p in log_problems(live.take_log())]
    live.last_case = case.id
    status = await case.send(live)
    if case.settle:
        await asyncio.sleep(case.settle)
    health = await healthz(live)
    if status not in case.expect:
        problems.append(f"status {status}, expected {sorted(case.expect)}")
    if status >= 500:
        problems.append(f"status {status} is a server error")
    if health != 200:
        problems.append(f"/healthz answered {health} after the case")
    problems += log_problems(live.take_log())
    state = db_state(live.env.db_path)
    if state != live.baseline:
        changed = {k: (live.baseline[k], state[k]) for k in state if state[k] != live.baseline[k]}
        problems.append(f"DB changed: {changed}")
        live.baseline = state  # blame only this case
    if live.cp.proc.poll() is not None:
        pytest.exit(f"the CP exited {live.cp.proc.returncode} during {case.id}")
    if problems:
        needs = f" (needs issue 9 item {case.item})" if case.item else ""
        pytest.fail(f"{case.id}{needs}: " + "; ".join(p[:1000] for p in problems))
