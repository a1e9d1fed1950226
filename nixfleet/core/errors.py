"""One exception family, split by blame.

Every message is one line, `<what>: <where> (<why>)` or `<source>: <field>: <problem>`,
fit to print after `nixfleet: ` and exit with `exit_code`.
"""

from __future__ import annotations


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class NixfleetError(Exception):
    """Root of every error a user or a peer can cause. Anything else is a bug."""

    exit_code: int = 1
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadInput(NixfleetError):
    """The caller's fault: a flag, a file, a token or a body that is not acceptable."""

    exit_code = 2
    http_status = 400


class ParseError(BadInput):
    """A document that does not match its schema; names the source and the field."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        where = f"{source}: {field}" if field else source
        # Field names and values come from untrusted input: keep the message one line.
        super().__init__(_one_line(f"{where}: {problem}"))
        self.source = source
        self.field = field
        self.problem = problem


class PeerError(NixfleetError):
    """Bad data or a bad answer from a peer: CP, agent, forge or binary cache."""

    exit_code = 1
    http_status = 502


class Unreachable(NixfleetError):
    """No answer came from a peer at all."""

    exit_code = 1
    http_status = 503


class VerifyError(NixfleetError):
    """A signed artifact, token or signature was rejected; `reason` is a stable name."""

    exit_code = 1
    http_status = 401

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class IllegalTransition(NixfleetError):
    """A state machine got an event it has no transition for."""

    exit_code = 1
    http_status = 500
