"""The operator's shell on the local control plane's host, where the seeds' commands run
as written: `curl -sk https://localhost:$CP_PORT/healthz | jq …`, `sqlite3 state.db …`,
`journalctl -u nixfleet-control-plane.service --since=… | grep 'checkin received' | awk
'{print $NF}'`.

Every command runs under `bash -c` in the CP's state dir (the local
/var/lib/nixfleet-cp, so `state.db` is the CP's database) with:

    CP_PORT         the port the CP listens on (127.0.0.1 and `localhost`)
    CP_URL          https://127.0.0.1:$CP_PORT
    CP_STATE_DIR    the state dir (the working directory)
    CP_DB           $CP_STATE_DIR/state.db
    CP_LOG          the log of the CP's current run (what journalctl shows since its start)
    CP_LOG_DIR      every run's log, cp-0.log, cp-1.log, … (the CP's journal)
    CA_CERT         the fleet CA (the runbook's /etc/nixfleet/cp/ca.pem)
    ROLLOUTS_DIR    CI's signed rollout manifests, as the CP module passes `--rollouts-dir`
    TRUST_FILE      the CP's --trust-file (the runbook's /etc/nixfleet/cp/trust.json)
    CP_ARGS         the current CP run's `serve` flags, shell-quoted (its ExecStart)
    OPERATOR_CERT   an operator's client certificate and key (the runbook's
    OPERATOR_KEY    <CLIENT_CERT_PEM> / <CLIENT_KEY_PEM>)
    ORG_ROOT_KEY    the org root private key as agenix decrypts it on the operator's
                    workstation (the runbook's /run/agenix/org-root-key; never on the CP)
    HOST_KEYS       the hosts' SSH host keys, `$HOST_KEYS/<host>/ssh_host_ed25519_key.pub`
                    (what the operator reads off a new host for `--csr-pubkey-fingerprint`)

`nixfleet` is the operator CLI and `nixfleet-control-plane` the CP's (for `check-config`),
both run with the fleet's mutant applied when it has one.

`journalctl` is a stand-in that prints the CP's journal (`-u
nixfleet-control-plane.service`, `--since=WHEN` as GNU date reads it, e.g. '5 min ago'
or an RFC 3339 time); `sqlite3` waits up to 5 s for the CP's write lock (the
operator's ~/.sqliterc `.timeout`) instead of failing with "database is locked".
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from harness.cpenv import CpEnv
from harness.fleet import CommandFailed

UNIT = "nixfleet-control-plane.service"

JOURNALCTL = r"""#!/usr/bin/env bash
# journalctl stand-in on the local CP host: the CP's journal (one log file per run).
set -euo pipefail
unit="" since=""
while [ $# -gt 0 ]; do
  case "$1" in
    -u|--unit) unit=$2; shift ;;
    --unit=*) unit=${1#--unit=} ;;
    -S|--since) since=$2; shift ;;
    --since=*) since=${1#--since=} ;;
    --no-pager|-q|--quiet) ;;
    *) echo "journalctl (local fleet): unsupported argument: $1" >&2; exit 2 ;;
  esac
  shift
done
case "$unit" in
  nixfleet-control-plane|nixfleet-control-plane.service) ;;
  *) echo "journalctl (local fleet): only -u nixfleet-control-plane.service is here" >&2
     exit 1 ;;
esac
from=""
if [ -n "$since" ]; then
  from=$(date -u -d "$since" +%Y-%m-%dT%H:%M:%S.%3NZ)
fi
for log in $(ls "$CP_LOG_DIR"/cp-*.log 2>/dev/null | sort -V); do
  awk -v from="$from" 'from == "" || $1 >= from' "$log"
done
"""


def serve_args(env: CpEnv) -> list[str]:
    """The flags after `serve` of the CP's latest run (none before the first)."""
    if not env.processes:
        return []
    raw = env.processes[-1].proc.args
    argv = [str(a) for a in raw] if isinstance(raw, list | tuple) else [str(raw)]
    return argv[argv.index("serve") + 1 :] if "serve" in argv else []


class OperatorShell:
    def __init__(self, env: CpEnv, home: Path) -> None:
        self.env = env
        self.home = home
        bin_dir = home / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        shim = bin_dir / "journalctl"
        shim.write_text(JOURNALCTL)
        shim.chmod(0o755)
        (home / ".sqliterc").write_text(".timeout 5000\n")
        self.operator = env.operator()
        self.org_root_key = home / "org-root-key"
        pem = env.kit.org_root_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.org_root_key.touch(mode=0o600)
        self.org_root_key.write_bytes(pem)

    def use_launcher(self, prefix: Sequence[str]) -> None:
        """`nixfleet` in the shell runs `prefix nixfleet.cli.main`, `nixfleet-control-plane`
        `prefix nixfleet.cp.main` (harness.launch: with the run's mutant applied, as in
        the CP and the agents)."""
        for name, module in (
            ("nixfleet", "nixfleet.cli.main"),
            ("nixfleet-control-plane", "nixfleet.cp.main"),  # its `check-config` lint
        ):
            shim = self.home / "bin" / name
            shim.write_text(f'#!/usr/bin/env bash\nexec {shlex.join(prefix)} {module} "$@"\n')
            shim.chmod(0o755)

    def environ(self) -> dict[str, str]:
        env = self.env
        current = env.processes[-1].log_path if env.processes else env.dir / "cp-0.log"
        return {
            **os.environ,
            "HOME": str(self.home),
            "PATH": os.pathsep.join(
                [
                    str(self.home / "bin"),
                    str(Path(sys.executable).parent),
                    os.environ.get("PATH", ""),
                ]
            ),
            "CP_PORT": str(env.port),
            "CP_URL": env.url(""),
            "CP_STATE_DIR": str(env.state_dir),
            "CP_DB": str(env.db_path),
            "CP_LOG": str(current),
            "CP_LOG_DIR": str(env.dir),
            "CA_CERT": str(env.pki.ca.cert),
            "ROLLOUTS_DIR": str(env.rollouts_dir),
            "TRUST_FILE": str(env.trust_path),
            "CP_ARGS": shlex.join(serve_args(env)),
            "OPERATOR_CERT": str(self.operator.cert),
            "OPERATOR_KEY": str(self.operator.key),
            "ORG_ROOT_KEY": str(self.org_root_key),
            "HOST_KEYS": str(env.pki.dir / "hosts"),
        }

    def run(self, cmd: str, *, timeout: float = 60.0) -> str:
        """Run `cmd` with bash; its stdout, or CommandFailed naming status and stderr."""
        self.env.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            res = subprocess.run(
                ["bash", "-c", cmd],
                cwd=self.env.state_dir,
                env=self.environ(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandFailed(f"operator command timed out after {timeout:g} s: {cmd}") from exc
        if res.returncode != 0:
            tail = " | ".join(res.stderr.strip().splitlines()[-3:])
            raise CommandFailed(
                f"operator command exited {res.returncode}: {cmd}" + (f" ({tail})" if tail else "")
            )
        return res.stdout
