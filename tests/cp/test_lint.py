"""`nixfleet-control-plane check-config` (the pre-deploy lint) and `serve`'s refusal of
an undecryptable secret: one line naming the file, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cpenv import CpEnv, MakeEnv, declared
from nixfleet.cp.main import main

AGE_PAYLOAD = b"age-encryption.org/v1\n-> X25519 c2VjcmV0\nc2VjcmV0c2VjcmV0\n--- x\n\x00\x01"
"""What agenix leaves when no identity matched: the secret still encrypted."""


@pytest.fixture
def env(make_env: MakeEnv) -> CpEnv:
    env = make_env(declared("h1"), with_forge=False)
    env.state_dir.mkdir(parents=True, exist_ok=True)
    env.rollouts_dir.mkdir(exist_ok=True)
    return env


def flags(env: CpEnv) -> list[str]:
    argv = env.args()
    return argv[argv.index("serve") + 1 :]


def test_check_config_passes_a_good_config(env: CpEnv, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", *flags(env)]) == 0
    assert capsys.readouterr().out.strip() == "check-config: ok"


@pytest.mark.parametrize("broken", ["missing", "encrypted"])
def test_check_config_flags_the_fleet_ca_key(
    env: CpEnv, broken: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key: Path = env.pki.ca.key
    if broken == "missing":
        key.unlink()
    else:
        key.write_bytes(AGE_PAYLOAD)
    assert main(["check-config", *flags(env)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(key) in lines[0], lines
    assert lines[0].startswith("check-config: ")


def test_check_config_one_line_per_problem(env: CpEnv, capsys: pytest.CaptureFixture[str]) -> None:
    env.pki.ca.key.unlink()
    env.pki.server.key.write_bytes(AGE_PAYLOAD)
    assert main(["check-config", *flags(env)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines
    assert any(str(env.pki.server.key) in ln for ln in lines)
    assert any(str(env.pki.ca.key) in ln for ln in lines)


def test_serve_names_an_undecryptable_fleet_ca_key(
    env: CpEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    env.pki.ca.key.write_bytes(AGE_PAYLOAD)
    assert main(["serve", *flags(env)]) == 2
    err = capsys.readouterr().err
    assert str(env.pki.ca.key) in err and "Traceback" not in err, err
