"""`fleet-sim` entry point."""

from __future__ import annotations

from nixfleet.cli.app import not_built


def main() -> int:
    return not_built("fleet-sim", "simulator issue")


if __name__ == "__main__":
    raise SystemExit(main())
