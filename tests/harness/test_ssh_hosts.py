"""Private sshd hosts (harness.sshhosts): real sshd on 127.0.0.1, real paramiko sessions,
testinfra over the same host-key-checked connection. Each test starts its own sshd on
a free port and stops it by its PID. A machine without sshd fails these tests with
the one-line reason (no skip: the ssh backend needs it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.nshost import namespaces_available
from harness.sshhosts import (
    PrivateSshd,
    SshError,
    SshHost,
    keygen,
    login_script,
    missing_tools,
)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[PrivateSshd, Path, Path]]:
    """A host world (its own /nix/store with a marker) behind a private sshd; the
    client key and a known_hosts listing the host's key."""
    why = missing_tools()
    assert why is None, why
    assert namespaces_available(), "host worlds need root mount namespaces (unshare --mount)"
    host = tmp_path / "h1"
    (host / "nix" / "store").mkdir(parents=True)
    (host / "nix" / "store" / "marker").write_text("h1's store\n")
    key = tmp_path / "client_key"
    sshd = PrivateSshd(
        host / "sshd",
        "h1",
        authorized_key=keygen(key, "test"),
        login=login_script(host, host / "nix", {"FLEET_TEST": "a b"}),
    ).start()
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line())
    try:
        yield sshd, key, known
    finally:
        sshd.stop()


def connect(sshd: PrivateSshd, key: Path, known: Path) -> SshHost:
    return SshHost("h1", "127.0.0.1", sshd.port, user="root", key=key, known_hosts=known)


def test_sessions_land_in_the_host_world(world: tuple[PrivateSshd, Path, Path]) -> None:
    sshd, key, known = world
    host = connect(sshd, key, known)
    try:
        # Commands and SFTP alike see the host's own /nix, its environment and directory.
        assert host.check("cat /nix/store/marker; echo $FLEET_TEST; pwd").splitlines() == [
            "h1's store",
            "a b",
            str(sshd.dir.parent),
        ]
        assert host.sftp.listdir("/nix/store") == ["marker"]
        assert host.run("exit 3").status == 3
    finally:
        host.close()


def test_files_and_links_over_sftp_and_testinfra(world: tuple[PrivateSshd, Path, Path]) -> None:
    sshd, key, known = world
    host = connect(sshd, key, known)
    try:
        target = str(sshd.dir.parent / "etc" / "token.json")
        host.check(f"mkdir -p {sshd.dir.parent / 'etc'}")
        host.put(b'{"a": 1}', target, 0o600)
        assert host.read(target) == b'{"a": 1}'
        assert host.read(target, 6) == b"1}"
        assert host.read(target + ".missing") is None
        link = sshd.dir.parent / "current-system"
        host.check(f"ln -s /nix/store/marker {link}")
        ti = host.testinfra
        assert ti.file(str(link)).is_symlink
        assert ti.file(str(link)).linked_to == "/nix/store/marker"
        assert ti.file(target).mode == 0o600
        assert ti.run("echo $FLEET_TEST").stdout == "a b\n"
    finally:
        host.close()


def test_an_unknown_host_key_is_refused_in_one_line(
    world: tuple[PrivateSshd, Path, Path], tmp_path: Path
) -> None:
    sshd, key, _known = world
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(SshError) as exc:
        SshHost("h1", "127.0.0.1", sshd.port, user="root", key=key, known_hosts=empty)
    assert f"cannot reach h1 at root@127.0.0.1:{sshd.port}" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_stop_ends_the_listener(world: tuple[PrivateSshd, Path, Path]) -> None:
    sshd, key, known = world
    proc = sshd.proc
    assert proc is not None and proc.poll() is None
    sshd.stop()
    assert proc.poll() is not None
    with pytest.raises(SshError, match="cannot reach h1"):
        connect(sshd, key, known)
