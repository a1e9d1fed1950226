"""`cp.start()` raises CpExited when the CP refuses to start: status, output, time."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import local
from harness.fleet import CpExited, Shape


@pytest.mark.slow
def test_local_start_refused_is_cp_exited(tmp_path: Path) -> None:
    with local.open_fleet(Shape(local_hosts=1), tmp_path, None) as fleet:
        fleet.cp.stop()
        trust = fleet.local.env.trust_path
        good = trust.read_bytes()
        trust.write_text("{not json")
        with pytest.raises(CpExited) as refused:
            fleet.cp.start()
        assert refused.value.status == 2
        assert "trust" in refused.value.output and refused.value.secs < 30
        assert "exited 2" in str(refused.value)
        trust.write_bytes(good)
        fleet.cp.start()
        assert fleet.call("GET", "/healthz", as_=None).status == 200
