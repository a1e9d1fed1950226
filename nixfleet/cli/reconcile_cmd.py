"""`nixfleet reconcile --fleet FILE --observed FILE [--now RFC3339]`.

Runs one reconcile tick (lifecycle §3.2) on the given files and prints the actions as
a JSON array in the fixture form (`expected.json`). A bad file ends in one line naming
the file and the field, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from nixfleet.core.actions import dump_actions
from nixfleet.core.errors import BadInput, ParseError
from nixfleet.core.fleet import parse_fleet
from nixfleet.core.observed import parse_observed
from nixfleet.core.reconcile import reconcile
from nixfleet.core.timeutil import parse_instant


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reconcile",
        help="run one reconcile tick on a fleet and an observed state; print the actions",
        description=(
            "Run the rollout reconciler once and print its actions as a JSON array "
            "(the expected.json form of the reconciler fixtures)."
        ),
    )
    p.add_argument("--fleet", required=True, metavar="FILE", help="fleet.resolved JSON")
    p.add_argument("--observed", required=True, metavar="FILE", help="observed.json")
    p.add_argument(
        "--now", metavar="RFC3339", help="the tick's instant (default: the current UTC time)"
    )
    p.set_defaults(func=run)


def _load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise BadInput(f"reconcile: cannot read {path} ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ParseError(path, "", f"not UTF-8 text ({exc.reason})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(
            path, "", f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from exc
    except RecursionError as exc:
        raise ParseError(path, "", "not valid JSON (nested too deeply)") from exc


def _printable(text: str) -> str:
    """Escape control characters (a JSON key may hold a newline) to keep one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def run(args: argparse.Namespace) -> int:
    try:
        now = (
            parse_instant(args.now, source="--now")
            if args.now is not None
            else datetime.now(UTC)
        )
        fleet = parse_fleet(_load_json(args.fleet), source=args.fleet)
        observed = parse_observed(_load_json(args.observed), source=args.observed)
    except ParseError as exc:
        raise ParseError(
            _printable(exc.source), _printable(exc.field), _printable(exc.problem)
        ) from exc
    actions = reconcile(fleet, observed, now)
    sys.stdout.write(json.dumps(dump_actions(actions), indent=2) + "\n")
    return 0
