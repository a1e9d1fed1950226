"""Protocol §1.1 constants, once: the version header and the routes.

The CP's aiohttp app, the agent's HTTP client and the simulator's CP and hosts all
name routes through these, so a route or the version cannot drift between them.
"""

from __future__ import annotations

from typing import Final

HEADER: Final = "X-Nixfleet-Protocol"
"""Every `/v1` request carries the protocol major version here."""
MAJOR: Final = 1

ENROLL: Final = "/v1/enroll"
BOOTSTRAP_REPORT: Final = "/v1/agent/bootstrap-report"
RENEW: Final = "/v1/agent/renew"
CHECKIN: Final = "/v1/agent/checkin"
CONFIRM: Final = "/v1/agent/confirm"
"""The default `activate.confirmEndpoint`."""
REPORT: Final = "/v1/agent/report"
WHOAMI: Final = "/v1/whoami"
CHANNEL: Final = "/v1/channels/{name}"
HOSTS: Final = "/v1/hosts"
ROLLOUTS: Final = "/v1/rollouts"
ROLLOUT: Final = "/v1/rollouts/{rid}"
ROLLOUT_SIG: Final = "/v1/rollouts/{rid}/sig"
HEALTHZ: Final = "/healthz"
READYZ: Final = "/readyz"
METRICS: Final = "/metrics"

AGENT_PREFIX: Final = "/v1/agent/"
"""A host's own routes: agent certificates only."""
ANONYMOUS: Final = frozenset({ENROLL, BOOTSTRAP_REPORT})
"""The `/v1` routes taken without a client certificate."""
AGENT_READS: Final = frozenset({WHOAMI, ROLLOUT, ROLLOUT_SIG})
"""The other routes an agent calls; every other mTLS route needs an operator certificate."""
