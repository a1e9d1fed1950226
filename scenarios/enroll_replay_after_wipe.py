"""`enroll-replay-after-wipe`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="enroll-replay-after-wipe",
    source="`CHANGELOG.md` 0.2.0 Security (#96); `bootstrap-token-lifecycle.md`",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"qemu", "local"}),
    waiting={"local": WHY},
)
