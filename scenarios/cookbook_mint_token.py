"""`cookbook-mint-token`: seed 002's "Mint a bootstrap token" recipe, verbatim, against a
CP with a bootstrap-nonce allowlist. Since #96 only nonces in the signed
`bootstrap-nonces.json` enroll and the seed's recipe never adds one: the token as minted
is refused; with the entry `mint-token` prints on stderr signed into the allowlist it
enrolls at the CP's next nonce poll."""

import json
from typing import Any

from harness.enrollsteps import enroll, entry, reason, said
from harness.fleet import Fleet, Reply, Scenario, Shape, expect
from harness.runner import TPM_NOT_PROVEN

MINT = (
    "nixfleet mint-token \\\n"
    "  --hostname {host} \\\n"
    "  --csr-pubkey-fingerprint "
    '"$(nixfleet fingerprint "$HOST_KEYS/{host}/ssh_host_ed25519_key.pub")" \\\n'
    '  --org-root-key "$ORG_ROOT_KEY" \\\n'
    "  > {host}-token.json"
)
"""Seed 002, `/run/agenix/org-root-key` being `$ORG_ROOT_KEY` here; the fingerprint is
the host key's, as `nixfleet fingerprint` prints it."""


def minted(fleet: Fleet, host: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The recipe's token file and the allowlist entry `mint-token` printed last on stderr."""
    fleet.operator(MINT.format(host=host) + f" 2> {host}-mint.err")
    token = json.loads(fleet.operator(f"cat {host}-token.json"))
    printed = json.loads(fleet.operator(f"tail -n 1 {host}-mint.err"))
    return token, printed


def steps(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    token, printed = minted(fleet, host)
    expect(printed == entry(token), "mint-token to print the token's bootstrapNonces entry")
    verbatim = enroll(fleet, host, token)
    expect(
        verbatim.status == 401 and "nonce_not_allowlisted" in reason(verbatim),
        "the recipe's token, its nonce not in the signed allowlist: 401 nonce_not_allowlisted",
        said(verbatim),
    )

    foreign, ghost = fleet.mint_token(host, key_of="impostor"), fleet.mint_token("ghost")
    fleet.publish_nonces([printed, entry(foreign), entry(ghost)])
    # The agent retries each poll; the CP applies the allowlist at its next nonce poll.
    last: list[Reply] = []

    def retried() -> bool:
        last.append(enroll(fleet, host, token))
        return last[-1].status == 200

    fleet.wait_until(
        retried,
        fleet.polls(2),
        "a certificate within one nonce poll and one retry of the printed entry's signing",
    )
    expect("certPem" in last[-1].json(), "the 200 to carry a certificate", said(last[-1]))

    ghostly = enroll(fleet, "ghost", ghost)
    expect(
        ghostly.status == 401 and "not declared" in reason(ghostly),
        "an allowlisted token of a host the fleet does not declare: 401",
        said(ghostly),
    )
    impostor = enroll(fleet, host, foreign, key_of="impostor")
    expect(
        impostor.status == 401 and "declared SSH host key" in reason(impostor),
        "an allowlisted token whose CSR key is not the declared host key: 401",
        said(impostor),
    )
    again = enroll(fleet, host, token)
    expect(again.status == 409, "the recipe's token replayed: 409", said(again))


SCENARIO = Scenario(
    id="cookbook-mint-token",
    source='002 "Mint a bootstrap token"; `bootstrap-token-lifecycle.md`; `CPT/enroll.rs`',
    summary="seed 002 mint-token verbatim: 401 until its printed entry is signed into the "
    "allowlist, then 200 within a nonce poll; undeclared / foreign key 401, replay 409",
    shape=Shape(hosts=1, local_hosts=1, nonce_allowlist=True, seed=43),
    steps=steps,
    checks=[],
    mutant="enroll-ignores-allowlist",
    backends=frozenset({"tpm", "qemu", "local"}),
    waiting={"tpm": TPM_NOT_PROVEN},
)
