"""`enroll-replay-after-wipe`: seed 001's wipe must not reopen replays of spent
bootstrap tokens. The reference kept spent nonces only in state.db and bounded the
replay by the signed allowlist (200 while the entry is live, 401 after); this project
journals them beside the DB and replays the journal at start (docs/hardening.md), so a
spent token is refused after the wipe whatever the allowlist says."""

from datetime import UTC, datetime, timedelta

from harness.enrollsteps import enroll, entry, said
from harness.fleet import Fleet, Reply, Scenario, Shape, expect
from nixfleet.core.timeutil import format_instant


def ready(fleet: Fleet, host: str) -> Reply:
    return fleet.call("GET", "/v1/whoami", as_=host)


def steps(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    live, short = fleet.mint_token(host), fleet.mint_token(host)
    expiry = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=fleet.polls(8))
    entries = [entry(live), entry(short, expiresAt=format_instant(expiry))]
    fleet.publish_nonces(entries)
    fleet.wait_until(
        lambda: enroll(fleet, host, live).status == 200,
        fleet.polls(3),
        "the allowlisted token to enroll within a nonce poll",
    )
    first = enroll(fleet, host, short)
    expect(first.status == 200, "the short-lived allowlisted token to enroll", said(first))

    # Seed 001: stop, wipe, start; CI's allowlist not back on the forge yet.
    fleet.cp.stop()
    fleet.cp.wipe()
    fleet.publish_nonces(None)
    fleet.cp.start()
    held = [ready(fleet, host).status, enroll(fleet, host, live).status]
    expect(held == [503, 503], "a required allowlist to hold /v1/* at 503 until primed", held)
    fleet.publish_nonces(entries)
    fleet.wait_until(
        lambda: ready(fleet, host).status == 200, fleet.polls(3), "/v1/* open once primed"
    )

    again = enroll(fleet, host, live)
    expect(
        again.status == 409,
        "the spent token, its allowlist entry live, refused 409 after the wipe (spent "
        "nonces replayed from the operator journal)",
        said(again),
    )
    fleet.wait_until(
        lambda: datetime.now(UTC) > expiry, fleet.polls(10), "the short entry's expiresAt"
    )
    late = enroll(fleet, host, short)
    expect(
        late.status in (401, 409),
        "the spent token, its allowlist entry expired, refused after the wipe",
        said(late),
    )


SCENARIO = Scenario(
    id="enroll-replay-after-wipe",
    source="`CHANGELOG.md` 0.2.0 Security (#96); `bootstrap-token-lifecycle.md`",
    summary="after the DR wipe a spent token is refused (409, journal), live or expired "
    "allowlist entry; a required allowlist holds /v1/* at 503 until primed",
    shape=Shape(hosts=1, local_hosts=1, nonce_allowlist=True, seed=42),
    steps=steps,
    checks=[],
    mutant="enroll-replay-after-wipe",
    backends=frozenset({"qemu", "local"}),
)
