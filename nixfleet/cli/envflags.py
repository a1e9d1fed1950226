"""Flags mirrored by environment variables: `--poll-interval` ⇐ `<PREFIX>POLL_INTERVAL`.

Precedence: the flag, then the environment, then the default. The environment is
read once, when the parser is built, so a daemon's `--help` shows the effective values.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any


def env_name(prefix: str, flag: str) -> str:
    return prefix + flag.lstrip("-").upper().replace("-", "_")


def add_env_flag(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    prefix: str,
    environ: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> None:
    """`parser.add_argument(flag, …)` whose default comes from the environment when set."""
    env = os.environ if environ is None else environ
    name = env_name(prefix, flag)
    if name in env:
        raw = env[name]
        if kwargs.get("action") == "store_true":
            kwargs["default"] = raw.strip().lower() in ("1", "true", "yes", "on")
        else:
            kwargs["default"] = raw
            kwargs.pop("required", None)
    help_text = kwargs.pop("help", "")
    kwargs["help"] = f"{help_text} [env {name}]".strip()
    parser.add_argument(flag, **kwargs)
