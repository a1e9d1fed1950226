"""The enrollment verbs (`mint_token`, `csr`, `publish_nonces`, `set_org_root`): real
on `local`, NotAvailable on `sim` (its CP does not simulate `/v1/enroll`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import local, sim
from harness.enrollsteps import enroll, entry, reason
from harness.fleet import NONCES, ORG_ROOT, NotAvailable, Shape


def test_sim_has_no_enrollment() -> None:
    with sim.open_fleet(Shape(hosts=2, seed=5), Path("."), None) as fleet:
        host = fleet.hosts[0]
        for verb in (
            lambda: fleet.mint_token(host),
            lambda: fleet.csr(host),
            lambda: fleet.publish_nonces(()),
            lambda: fleet.set_org_root(1, 0),
        ):
            with pytest.raises(NotAvailable, match="/v1/enroll"):
                verb()


@pytest.mark.slow
def test_local_tokens_allowlist_and_org_root(tmp_path: Path) -> None:
    shape = Shape(hosts=1, local_hosts=1, nonce_allowlist=True, seed=5)
    with local.open_fleet(shape, tmp_path, None) as fleet:
        host = fleet.hosts[0]
        token = fleet.mint_token(host)
        refused = enroll(fleet, host, token)
        assert refused.status == 401 and "nonce_not_allowlisted" in reason(refused)
        fleet.publish_nonces([entry(token)])
        fleet.wait_until(
            lambda: enroll(fleet, host, token).status != 401, fleet.polls(3), "allowlisted"
        )
        assert enroll(fleet, host, token).status == 409  # the wait's 200 spent it
        impostor = fleet.mint_token(host, key_of="impostor")
        fleet.publish_nonces([entry(impostor)])
        fleet.sleep(fleet.polls(2))
        assert enroll(fleet, host, impostor, key_of="impostor").status == 401

        # A token of org root key 1 verifies once the CP's trust.json names it.
        fleet.set_org_root(1, 0)
        rotated = fleet.mint_token(host, org_key=1)
        fleet.publish_nonces([entry(rotated)])
        fleet.cp.stop()
        fleet.cp.start()
        fleet.wait_until(
            lambda: enroll(fleet, host, rotated).status == 200, fleet.polls(3), "new key"
        )
        assert [e.kind for e in fleet.history.events if e.kind in (NONCES, ORG_ROOT)] == [
            NONCES,
            NONCES,
            NONCES,
            ORG_ROOT,
            NONCES,
        ]
