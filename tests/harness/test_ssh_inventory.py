"""The ssh backend's inventory: parsed and checked, every problem one line; the
backend's own inventory round-trips; `fleet-harness --inventory` rejects a bad file
with exit 2 before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.inventory import InventoryHost, load, write
from harness.main import main
from nixfleet.core.errors import BadInput

LAB = """
known_hosts = "known_hosts"

[[host]]
name = "cp"
address = "10.0.0.1"
key = "keys/harness"
role = "cp"
dir = "/var/lib/nixfleet-cp"

[[host]]
name = "rack1-a"
address = "10.0.0.11"
port = 2222
key = "keys/harness"
dir = "/var/lib/nixfleet-lab"
unit = "nixfleet-agent.service"
"""


def test_a_lab_inventory(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(LAB)
    inv = load(path)
    assert [h.name for h in inv.agents] == ["rack1-a"]
    assert inv.cp is not None and inv.cp.port == 22 and inv.cp.user == "root"
    agent = inv.host("rack1-a")
    assert agent.key == tmp_path / "keys/harness"
    assert agent.known_hosts == tmp_path / "known_hosts"
    assert agent.unit == "nixfleet-agent.service" and not agent.private
    assert agent.where == "rack1-a (root@10.0.0.11:2222)"


def test_private_hosts_round_trip(tmp_path: Path) -> None:
    hosts = [
        InventoryHost(name="h1", address="127.0.0.1", key=tmp_path / "k", private=True),
        InventoryHost(name="cp", address="127.0.0.1", key=tmp_path / "k", role="cp", private=True),
    ]
    inv = write(tmp_path / "inventory.toml", hosts)
    assert list(inv.hosts) == hosts


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no [[host]] entries"),
        ("[[host]]\nname = 'a'\n", "host #1: 'address' missing or not a string"),
        (
            "[[host]]\nname='a'\naddress='x'\nkey='k'\ndir='/d'\n",
            "host #1 (a): no known_hosts file (host keys are checked)",
        ),
        (
            "[[host]]\nname='a'\naddress='x'\nkey='k'\nprivate=true\nport=99999\n",
            "a private host listens on 127.0.0.1 only",
        ),
        (
            "[[host]]\nname='a'\naddress='127.0.0.1'\nkey='k'\nprivate=true\nrole='db'\n",
            "host #1 (a): role 'db' not in ('agent', 'cp')",
        ),
        (
            "[[host]]\nname='a'\naddress='127.0.0.1'\nkey='k'\nprivate=true\nrole='cp'\n",
            "no host with role agent",
        ),
        (
            "[[host]]\nname='a'\naddress='127.0.0.1'\nkey='k'\nprivate=true\n" * 2,
            "host 'a' listed twice",
        ),
        ("[[host]]\nname='a'\nadress='x'\n", "unknown key 'adress'"),
        ("[[host]\n", "not TOML"),
    ],
)
def test_a_bad_inventory_is_one_line(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(text)
    with pytest.raises(BadInput) as exc:
        load(path)
    assert problem in str(exc.value)
    assert str(exc.value).startswith(f"inventory {path}")
    assert "\n" not in str(exc.value)


def test_fleet_harness_checks_the_inventory_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.toml"
    argv = ["run", "clean-rollout", "--backend", "ssh", "--inventory", str(missing)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fleet-harness: inventory {missing}: cannot read it (No such file or directory)"


def test_the_readme_lab_inventory_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Lab workflow") :]
    block = section[section.index("```toml\n") + len("```toml\n") :]
    path = tmp_path / "lab.toml"
    path.write_text(block[: block.index("```")])
    inv = load(path)
    assert [h.name for h in inv.agents] == ["h1", "h2"]
    assert inv.cp is not None and all(h.private for h in inv.hosts)
