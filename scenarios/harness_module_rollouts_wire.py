"""Reference harness scenario `module-rollouts-wire`: the real CP, started with the
module's command line, serves CI's signed rollout manifests byte for byte.

`GET /v1/rollouts/<rid>` and `/sig` (as the host's agent fetches them) must be the very
bytes CI signed, read from the manifests directory the module passes as
`--rollouts-dir` (`$ROLLOUTS_DIR` on the CP host); an unknown (all-zero) id is 404.
The CP relays manifests and never re-serialises them (docs/protocol.md §1.2). The
mutant is a module that drops `--rollouts-dir` from the command line.
"""

import base64

from harness.fleet import Fleet, Scenario, Shape, expect
from harness.steps import newest_rollout

ZERO_RID = "0" * 64
SERVED = (("", "application/json", ".json"), ("/sig", "application/octet-stream", ".json.sig"))
"""(route suffix, content type, CI's file suffix) of the two answers."""


def signed_by_ci(fleet: Fleet, rid: str, suffix: str) -> bytes:
    """The file CI wrote, read on the CP host (base64: the signature is binary)."""
    return base64.b64decode(fleet.operator(f'base64 -w0 "$ROLLOUTS_DIR/{rid}{suffix}"'))


def first_difference(a: bytes, b: bytes) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def steps(fleet: Fleet) -> None:
    rid = newest_rollout(fleet)
    expect(rid is not None, "the installed release to have a rollout id")
    assert rid is not None
    host = fleet.hosts[0]
    for route, content_type, suffix in SERVED:
        path = f"/v1/rollouts/{rid}{route}"
        reply = fleet.call("GET", path, as_=host)
        expect(reply.status == 200, f"{path} 200", reply.line())
        want = signed_by_ci(fleet, rid, suffix)
        expect(
            reply.body == want,
            f"{path} byte-identical to CI's {rid}{suffix} ({len(want)} bytes)",
            f"{len(reply.body)} bytes, differing at byte {first_difference(reply.body, want)}",
        )
        got = reply.headers.get("content-type", "").split(";")[0]
        expect(got == content_type, f"{path} served as {content_type}", got)
        unknown = fleet.call("GET", f"/v1/rollouts/{ZERO_RID}{route}", as_=host)
        expect(unknown.status == 404, f"the all-zero rollout id{route} 404", unknown.line())


SCENARIO = Scenario(
    id="harness-module-rollouts-wire",
    source="reference harness scenario harness-module-rollouts-wire",
    summary="the real CP serves /v1/rollouts/<rid> and /sig byte-identical to CI's; zero id 404",
    shape=Shape(hosts=3, local_hosts=1, seed=16),
    steps=steps,
    checks=[],
    mutant="module-drops-rollouts-dir",
    backends=frozenset({"qemu", "local"}),
)
