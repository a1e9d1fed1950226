"""The real local fleet needs nix, sqlite3, curl, jq and root mount namespaces, all of
which `ci/bootstrap.sh` provides. A machine without them fails these tests with the
reason; it does not skip them (a skip would hide a feature that no longer runs)."""

from __future__ import annotations

import shutil

import pytest

from harness.nshost import namespaces_available

TOOLS = ("nix-build", "sqlite3", "curl", "jq")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/local/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.nix)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def local_fleet_requirements() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"the local fleet tests need {', '.join(missing)} (run ci/bootstrap.sh)")
    if not namespaces_available():
        pytest.fail("the local fleet tests need root mount namespaces (unshare --mount)")
