"""Grammars of the identifiers peers send, and the escaping of text bound for logs.

Every identifier a peer sends is checked at the wire against one `Grammar`, so what
is stored, served from `/v1/hosts` and written to the log is bounded and has no
control characters: a host cannot forge a `checkin received … <victim>` line, which
seed 001 trusts. Store basenames (closure hashes) are in `closure.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ParseError

MAX_HOSTNAME = 253
MAX_LABEL = 63
MAX_TOKEN = 256
"""Short identifiers: boot ids, versions, channel refs, event names, signatures."""
MAX_TEXT = 4096
"""Free text: reasons, error messages, probe names."""
PREVIEW_CHARS = 64

# C0, DEL, C1 and the Unicode line and paragraph separators: whatever can end a log
# line or steer a terminal.
_CONTROL = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_ESCAPES = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _CONTROL}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_CONTROL_RX = re.compile("[" + "".join(re.escape(chr(c)) for c in _CONTROL) + "]")
_BLANK_RX = re.compile(r"\s")
"""Exactly the characters `str.isspace` calls blank (both ask Unicode's whitespace)."""

# RFC 1123 labels; `_` is allowed as NixOS's networking.hostName allows it.
_LABEL = rf"[A-Za-z0-9_](?:[A-Za-z0-9_-]{{0,{MAX_LABEL - 2}}}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_ROLLOUT_ID = re.compile(r"[0-9a-f]{64}")


def escape_controls(text: str) -> str:
    """`text` with every control character escaped (`\\n`, `\\r`, `\\t`, `\\xNN`, `\\uNNNN`)."""
    return text.translate(_ESCAPES)


def has_control(text: str) -> bool:
    return _CONTROL_RX.search(text) is not None


def preview(text: str) -> str:
    """A short, one-line quotation of an untrusted value for an error message."""
    if len(text) <= PREVIEW_CHARS:
        return repr(text)
    return f"{text[:PREVIEW_CHARS]!r}… ({len(text)} chars)"


@dataclass(frozen=True, slots=True)
class Grammar:
    """What a valid value is (`rule`, for error messages) and the test for it."""

    rule: str
    test: Callable[[str], bool]

    def check(self, value: str, *, source: str, field: str) -> str:
        if not self.test(value):
            raise ParseError(source, field, f"{preview(value)} is not {self.rule}")
        return value


def _is_token(text: str) -> bool:
    # No blank either: an identifier can then never carry a phrase such as
    # "checkin received from victim" into a log line.
    return len(text) <= MAX_TOKEN and _BLANK_RX.search(text) is None and not has_control(text)


def _is_text(text: str) -> bool:
    return len(text) <= MAX_TEXT and not has_control(text)


HOSTNAME = Grammar(
    f"a host name (RFC 1123 labels of letters, digits, '-' and '_', at most {MAX_LABEL} "
    f"characters each, {MAX_HOSTNAME} in all)",
    lambda text: len(text) <= MAX_HOSTNAME and _HOSTNAME.fullmatch(text) is not None,
)
ROLLOUT_ID = Grammar(
    "a rollout id (64 lowercase hex digits)", lambda text: _ROLLOUT_ID.fullmatch(text) is not None
)
TOKEN = Grammar(
    f"an identifier (at most {MAX_TOKEN} characters, no blanks, no control characters)", _is_token
)
TEXT = Grammar(f"a text (at most {MAX_TEXT} characters, no control characters)", _is_text)
