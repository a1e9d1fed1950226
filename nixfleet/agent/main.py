"""`nixfleet-agent` entry point."""

from __future__ import annotations

from nixfleet.cli.app import not_built


def main() -> int:
    return not_built("nixfleet-agent", "agent issue")


if __name__ == "__main__":
    raise SystemExit(main())
