"""`nixfleet-control-plane` entry point."""

from __future__ import annotations

from nixfleet.cli.app import not_built


def main() -> int:
    return not_built("nixfleet-control-plane", "control-plane issue")


if __name__ == "__main__":
    raise SystemExit(main())
