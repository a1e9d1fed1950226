"""The simulated CP answers `Fleet.call` on exactly the aiohttp app's routes, so the
two route tables cannot drift apart unseen."""

from __future__ import annotations

from fleet_sim.cp import _ROUTES
from fleet_sim.fleetgen import ReleaseKit
from nixfleet.core.trust import parse_trust
from nixfleet.cp.http import build_app
from nixfleet.cp.service import CpService, ServiceSettings
from nixfleet.cp.store import Store


def test_sim_routes_are_the_http_apps() -> None:
    trust = parse_trust(ReleaseKit().trust())
    service = CpService(Store.open(":memory:"), lambda: trust, ServiceSettings(agent_cn_suffix="t"))
    app = build_app(service, strict=False, max_body_bytes=1 << 20)
    served = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    assert served == set(_ROUTES)
