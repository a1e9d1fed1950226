"""`--tpm TCTI [--tpm-handle H]`: the release key held in a TPM (hw.tpm), shared by
`release sign` and `keygen`. hw.tpm is imported only when `--tpm` is given, so the
CLI runs where tpm2-pytss is not installed."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hw.tpm import TpmKey

DEFAULT_HANDLE_TEXT = "0x81010002"


def add(parser: Any, *, tpm_help: str, group: Any = None) -> None:
    """`--tpm` (into `group` when given: exclusive with `--key`) and `--tpm-handle`."""
    (group or parser).add_argument(
        "--tpm",
        metavar="TCTI",
        help=f"{tpm_help} (device:/dev/tpmrm0, swtpm:host=127.0.0.1,port=2321)",
    )
    parser.add_argument(
        "--tpm-handle",
        metavar="H",
        default=DEFAULT_HANDLE_TEXT,
        help=f"persistent handle of the key (default {DEFAULT_HANDLE_TEXT})",
    )


def open_key(args: argparse.Namespace, *, command: str, create: bool) -> TpmKey:
    """The TPM key `--tpm`/`--tpm-handle` name; a TpmError (one line) prefixed with
    the command when there is none to be had."""
    from hw.tpm import TpmError, TpmKey, parse_handle

    try:
        return TpmKey.open(args.tpm, parse_handle(args.tpm_handle), create=create)
    except TpmError as exc:
        raise TpmError(f"{command}: {exc}") from None
