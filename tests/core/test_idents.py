"""Identifier grammars (core/idents.py, core/closure.py), their use at the wire, and the
escaping every log line gets."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest

from nixfleet.core import wire
from nixfleet.core.closure import CLOSURE_HASH
from nixfleet.core.errors import ParseError
from nixfleet.core.idents import HOSTNAME, ROLLOUT_ID, TEXT, TOKEN, Grammar, escape_controls
from nixfleet.logsetup import configure_logging

HASH = "0123456789abcdfghijklmnpqrsvwxyz"
CLOSURE = f"{HASH}-nixos-system-h1-26.05"
ROLLOUT = "ab" * 32
FORGED = "x\n2026-01-01T00:00:00.000Z INFO nixfleet.cp: checkin received closure_hash=a from victim"

GRAMMAR_CASES: list[tuple[str, Grammar, str, bool]] = [
    ("closure", CLOSURE_HASH, CLOSURE, True),
    ("closure all name chars", CLOSURE_HASH, f"{HASH}-a+b-c._?=Z9", True),
    ("closure name at the bound", CLOSURE_HASH, f"{HASH}-" + "n" * 211, True),
    ("closure name past the bound", CLOSURE_HASH, f"{HASH}-" + "n" * 212, False),
    ("closure 100 KB", CLOSURE_HASH, f"{HASH}-" + "n" * 100_000, False),
    ("closure path traversal", CLOSURE_HASH, "../../etc/passwd", False),
    ("closure store path", CLOSURE_HASH, f"/nix/store/{CLOSURE}", False),
    ("closure slash in name", CLOSURE_HASH, f"{HASH}-a/../b", False),
    ("closure bare hash", CLOSURE_HASH, HASH, False),
    ("closure empty name", CLOSURE_HASH, f"{HASH}-", False),
    ("closure hash not base32", CLOSURE_HASH, "e" * 32 + "-x", False),  # e is not nix base32
    ("closure short hash", CLOSURE_HASH, HASH[:31] + "-x", False),
    ("closure trailing newline", CLOSURE_HASH, CLOSURE + "\n", False),
    ("closure forged line", CLOSURE_HASH, CLOSURE + FORGED, False),
    ("closure space", CLOSURE_HASH, f"{HASH}-a b", False),
    ("closure empty", CLOSURE_HASH, "", False),
    ("host", HOSTNAME, "h1", True),
    ("host dotted", HOSTNAME, "web-01.dc1.example.org", True),
    ("host underscore", HOSTNAME, "web_01", True),
    ("host label at the bound", HOSTNAME, "a" * 63, True),
    ("host label past the bound", HOSTNAME, "a" * 64, False),
    ("host at the bound", HOSTNAME, ".".join(["a" * 63] * 3 + ["a" * 61]), True),
    ("host past the bound", HOSTNAME, ".".join(["a" * 63] * 3 + ["a" * 62]), False),
    ("host empty", HOSTNAME, "", False),
    ("host leading hyphen", HOSTNAME, "-h", False),
    ("host trailing hyphen", HOSTNAME, "h-", False),
    ("host empty label", HOSTNAME, "a..b", False),
    ("host trailing dot", HOSTNAME, "h.", False),
    ("host path traversal", HOSTNAME, "../victim", False),
    ("host trailing newline", HOSTNAME, "h1\n", False),
    ("host forged line", HOSTNAME, "h1" + FORGED, False),
    ("host space", HOSTNAME, "h 1", False),
    ("host at sign", HOSTNAME, "operator-a@b", False),
    ("rollout", ROLLOUT_ID, ROLLOUT, True),
    ("rollout upper case", ROLLOUT_ID, ROLLOUT.upper(), False),
    ("rollout short", ROLLOUT_ID, ROLLOUT[:-1], False),
    ("rollout long", ROLLOUT_ID, ROLLOUT + "a", False),
    ("rollout trailing newline", ROLLOUT_ID, ROLLOUT + "\n", False),
    ("rollout path", ROLLOUT_ID, "../" + ROLLOUT[3:], False),
    ("token", TOKEN, "0.1.0+nixos-26.05", True),
    ("token blank", TOKEN, "checkin received from victim", False),
    ("token no-break space", TOKEN, "a\u00a0b", False),
    ("token empty", TOKEN, "", True),
    ("token unicode", TOKEN, "böot-ü", True),
    ("token at the bound", TOKEN, "t" * 256, True),
    ("token past the bound", TOKEN, "t" * 257, False),
    ("token newline", TOKEN, "a\nb", False),
    ("token carriage return", TOKEN, "a\rb", False),
    ("token tab", TOKEN, "a\tb", False),
    ("token escape", TOKEN, "\x1b[31mred", False),
    ("token NUL", TOKEN, "a\x00", False),
    ("token DEL", TOKEN, "a\x7f", False),
    ("token C1 next line", TOKEN, "a\x85b", False),
    ("token line separator", TOKEN, "a\u2028b", False),
    ("text", TEXT, "fetch failed: connection refused (after 3 tries)", True),
    ("text long", TEXT, "r" * 4096, True),
    ("text past the bound", TEXT, "r" * 4097, False),
    ("text newline", TEXT, "first\nsecond", False),
]


@pytest.mark.parametrize(
    ("grammar", "value", "valid"),
    [c[1:] for c in GRAMMAR_CASES],
    ids=[c[0] for c in GRAMMAR_CASES],
)
def test_grammar(grammar: Grammar, value: str, valid: bool) -> None:
    assert grammar.test(value) is valid
    if valid:
        assert grammar.check(value, source="S", field="f") == value
        return
    with pytest.raises(ParseError) as err:
        grammar.check(value, source="S", field="f")
    message = str(err.value)
    assert message.startswith("S: f: ") and grammar.rule in message
    assert "\n" not in message and "\r" not in message
    assert len(message) < 600  # a 100 KB value is quoted, not echoed


CONFIRM = {
    "hostname": "h1",
    "rollout": ROLLOUT,
    "wave": 0,
    "generation": {"closureHash": CLOSURE, "bootId": "boot-1"},
}
CHECKIN = {
    "hostname": "h1",
    "agentVersion": "0.1.0",
    "currentGeneration": {"closureHash": CLOSURE, "bootId": "boot-1"},
    "pendingGeneration": {"closureHash": CLOSURE},
    "lastFetchOutcome": {"result": "fetch-failed", "error": "e", "rolloutId": ROLLOUT},
    "healthProbes": [{"name": "web", "kind": "http", "status": "fail", "failureReason": "r"}],
}
REPORT = {
    "hostname": "h1",
    "agentVersion": "0.1.0",
    "occurredAt": "2026-01-01T00:00:00Z",
    "rollout": ROLLOUT,
    "event": "rollback-triggered",
    "details": {"reason": "r"},
}

WIRE_CASES: list[tuple[str, Any, dict[str, Any], tuple[str, ...], str]] = [
    ("checkin", wire.parse_checkin_request, CHECKIN, ("hostname",), "h1" + FORGED),
    ("checkin", wire.parse_checkin_request, CHECKIN, ("hostname",), "../h1"),
    ("checkin", wire.parse_checkin_request, CHECKIN, ("agentVersion",), "0.1\n"),
    ("checkin", wire.parse_checkin_request, CHECKIN, ("currentGeneration", "closureHash"), FORGED),
    (
        "checkin",
        wire.parse_checkin_request,
        CHECKIN,
        ("currentGeneration", "closureHash"),
        "../../etc/passwd",
    ),
    (
        "checkin",
        wire.parse_checkin_request,
        CHECKIN,
        ("currentGeneration", "closureHash"),
        f"{HASH}-" + "x" * 100_000,
    ),
    ("checkin", wire.parse_checkin_request, CHECKIN, ("currentGeneration", "bootId"), "b\r"),
    ("checkin", wire.parse_checkin_request, CHECKIN, ("pendingGeneration", "closureHash"), "x"),
    ("checkin", wire.parse_checkin_request, CHECKIN, ("lastFetchOutcome", "rolloutId"), "r1"),
    ("checkin", wire.parse_checkin_request, CHECKIN, ("lastFetchOutcome", "error"), "e" * 5000),
    ("checkin", wire.parse_checkin_request, CHECKIN, ("healthProbes", 0, "name"), "n\n"),
    ("confirm", wire.parse_confirm_request, CONFIRM, ("hostname",), "h1\n"),
    ("confirm", wire.parse_confirm_request, CONFIRM, ("rollout",), "stable@r2"),
    ("confirm", wire.parse_confirm_request, CONFIRM, ("generation", "closureHash"), "../x"),
    ("report", wire.parse_report_request, REPORT, ("hostname",), "h 1"),
    ("report", wire.parse_report_request, REPORT, ("event",), "e" * 300),
    ("report", wire.parse_report_request, REPORT, ("event",), "checkin received from victim"),
    ("report", wire.parse_report_request, REPORT, ("rollout",), "r\n"),
]


@pytest.mark.parametrize(
    ("parse", "doc", "path", "value"),
    [c[1:] for c in WIRE_CASES],
    ids=[f"{c[0]}-{'.'.join(map(str, c[3]))}-{i}" for i, c in enumerate(WIRE_CASES)],
)
def test_hostile_identifiers_are_refused_at_the_wire(
    parse: Any, doc: dict[str, Any], path: tuple[str | int, ...], value: str
) -> None:
    parse(doc)  # the fixture itself is valid
    bad = copy.deepcopy(doc)
    node: Any = bad
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(ParseError) as err:
        parse(bad, source="body")
    assert "\n" not in str(err.value) and len(str(err.value)) < 600


def test_escape_controls() -> None:
    assert escape_controls("plain — ünïcode") == "plain — ünïcode"
    assert escape_controls("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert escape_controls("\x00\x1b[31m\x7f\x85\u2028\u2029") == (
        "\\x00\\x1b[31m\\x7f\\x85\\u2028\\u2029"
    )


def test_log_records_never_hold_a_raw_control_character(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging()
    log = logging.getLogger("nixfleet.cp")
    log.info("checkin received closure_hash=%s from %s", FORGED, "h1\r\x1b[2K")
    log.warning("message with\nnewline and\u2028separator")
    try:
        raise ValueError("boom\r\nsecond line")
    except ValueError:
        log.exception("failed for %s", "h\n1")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3, lines
    first, second, third = lines
    assert first.endswith("from h1\\r\\x1b[2K")
    assert "closure_hash=x\\n2026-01-01T00:00:00.000Z INFO" in first
    assert " WARNING nixfleet.cp: message with\\nnewline and\\u2028separator" in second
    # The traceback stays on the record's line, its lines joined with " | ".
    assert "failed for h\\n1 | Traceback (most recent call last):" in third
    assert third.endswith("ValueError: boom\\r | second line")
    assert [ln.split()[-1] for ln in lines if "checkin received" in ln] == ["h1\\r\\x1b[2K"]
