"""`nixfleet verify-artifact ARTIFACT --trust-file TRUST [...]`: check a signed artifact.

Runs the protocol §3.3 checks against trust.json's ciReleaseKey, exactly as the CP
and agent do. Exit 0 valid (one summary line with signed_at), 1 rejected
(`nixfleet: verify-artifact: <reason>: <detail>`), 2 usage or unreadable input.

`--kind rollout-manifest` uses the fixed 3600 s window and requires `--rollout-id`,
which must equal sha256 hex of the JCS of the received bytes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nixfleet.core.canonical import load_json, sha256_hex
from nixfleet.core.errors import BadInput, NixfleetError, VerifyError
from nixfleet.core.freshness import DEFAULT_FRESHNESS_WINDOW_SECS, age_secs
from nixfleet.core.trust import parse_trust
from nixfleet.core.verify import Verified, verify_artifact, verify_rollout_manifest

from .cryptofiles import now_from, read_bytes

COMMAND = "verify-artifact"
ARTIFACT = "artifact"
ROLLOUT_MANIFEST = "rollout-manifest"


class Rejected(NixfleetError):
    """The artifact failed verification: exit 1, the reason named first."""

    exit_code = 1

    def __init__(self, exc: VerifyError) -> None:
        super().__init__(f"{COMMAND}: {exc}")
        self.reason = exc.reason


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        COMMAND,
        help="verify a signed artifact against trust.json (exit 0 ok, 1 rejected, 2 input)",
        description=(
            "Verify ARTIFACT and its raw detached signature against trust.json's "
            "ciReleaseKey, in the order of protocol §3.3."
        ),
    )
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("--signature", metavar="SIG", help="raw signature (default: ARTIFACT.sig)")
    p.add_argument("--trust-file", required=True, metavar="TRUST", help="trust.json")
    p.add_argument("--now", metavar="RFC3339", help="verify as of this instant (default: now)")
    p.add_argument(
        "--freshness-window-secs",
        type=_non_negative_int,
        metavar="N",
        help=f"artifact kind only (default {DEFAULT_FRESHNESS_WINDOW_SECS}); ±60 s slack",
    )
    p.add_argument("--kind", choices=(ARTIFACT, ROLLOUT_MANIFEST), default=ARTIFACT)
    p.add_argument("--rollout-id", metavar="HEX", help="rollout-manifest: the advertised id")
    p.set_defaults(func=run)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    manifest = args.kind == ROLLOUT_MANIFEST
    if manifest and args.rollout_id is None:
        raise BadInput(f"{COMMAND}: --kind rollout-manifest needs --rollout-id")
    if manifest and args.freshness_window_secs is not None:
        raise BadInput(
            f"{COMMAND}: --freshness-window-secs does not apply to rollout manifests "
            "(fixed 3600 s window)"
        )
    if not manifest and args.rollout_id is not None:
        raise BadInput(f"{COMMAND}: --rollout-id needs --kind rollout-manifest")
    now = now_from(args.now)
    sig_path = args.signature if args.signature is not None else args.artifact + ".sig"
    raw = read_bytes(args.artifact, command=COMMAND, what="artifact")
    signature = read_bytes(sig_path, command=COMMAND, what="signature")
    trust_raw = read_bytes(args.trust_file, command=COMMAND, what="trust file")
    trust = parse_trust(load_json(trust_raw, source=args.trust_file), source=args.trust_file)
    slot = trust.ci_release_key
    try:
        verified: Verified
        if manifest:
            verified = verify_rollout_manifest(
                raw, signature, slot, now=now, rollout_id=args.rollout_id, source=args.artifact
            )
        else:
            window = args.freshness_window_secs
            verified = verify_artifact(
                raw,
                signature,
                slot,
                now=now,
                window_secs=DEFAULT_FRESHNESS_WINDOW_SECS if window is None else window,
                source=args.artifact,
            )
    except VerifyError as exc:
        raise Rejected(exc) from exc
    summary = (
        f"{COMMAND}: ok {args.artifact} kind={args.kind} signed_at={verified.signed_at_text} "
        f"age_secs={age_secs(verified.signed_at, now)} key={verified.key.role} "
        f"algorithm={verified.key.key.algorithm}"
    )
    if manifest:
        summary += f" rollout_id={sha256_hex(verified.canonical)}"
    sys.stdout.write(summary + "\n")
    return 0
