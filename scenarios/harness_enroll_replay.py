"""`harness-enroll-replay`: one bootstrap token sent twice at once must give one
certificate. The nonce is claimed by one atomic insert into `token_replay`; the Old
reference checked it, then recorded it in a separate step, and two concurrent enrolls
both got certificates."""

from harness.enrollsteps import enroll, enroll_together, said, statuses
from harness.fleet import Fleet, Scenario, Shape, expect

SUITE_EXTRA = 16
"""The reference suite's extra: this many enrolls of one token at once."""


def replay_rows(fleet: Fleet, token: dict[str, object]) -> int:
    nonce = token["claims"]["nonce"]  # type: ignore[index]
    rows = fleet.cp.sql(f"SELECT count(*) FROM token_replay WHERE nonce = '{nonce}'")
    return int(rows[0][0])


def logged_replays(fleet: Fleet) -> int:
    out = fleet.operator(
        "journalctl -u nixfleet-control-plane.service | grep -c 'token replay detected at' || true"
    )
    return int(out.strip() or 0)


def steps(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    for n in (2, SUITE_EXTRA):
        before = logged_replays(fleet)
        token = fleet.mint_token(host)
        seen = statuses(enroll_together(fleet, host, token, n))
        expect(
            seen == [200] + [409] * (n - 1),
            f"{n} enrolls of one token sent together to give exactly one 200, the rest 409",
            seen,
        )
        expect(replay_rows(fleet, token) == 1, "one token_replay row for the nonce")
        # The check or, when both got past it, the atomic record names each replay.
        logged = logged_replays(fleet) - before
        expect(logged == n - 1, f"{n - 1} 'token replay detected at' log lines", logged)
    # Without its replay table the CP must fail closed, never issue.
    fleet.operator("sqlite3 state.db 'DROP TABLE token_replay'")
    blind = enroll(fleet, host, fleet.mint_token(host))
    expect(blind.status not in (0, 200), "enroll without token_replay refused", said(blind))


SCENARIO = Scenario(
    id="harness-enroll-replay",
    source="reference harness scenario harness-enroll-replay",
    summary="two (and 16) parallel enrolls of one token: one 200, the rest 409; no replay "
    "table: refused",
    shape=Shape(hosts=1, local_hosts=1, seed=41),
    steps=steps,
    checks=[],
    mutant="check-then-record-enroll-nonce",
    backends=frozenset({"qemu", "local"}),
)
