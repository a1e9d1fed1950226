"""The test PKI (real TLS handshakes on 127.0.0.1) and the HTTPS test forge."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness.forge import Forge, ForgeMode, ForgeProcess, ForgeTls
from harness.pki import Pki, client_ssl_context
from nixfleet.core.hostkey import load_host_private_key, parse_public_line
from nixfleet.cp.issuance import extract_machine_id

FILE_BODY = b'{"schemaVersion":1}'


def peer_cn(peer: Any) -> str | None:
    """The commonName of `ssl`'s validated peer-certificate dict (None: no cert)."""
    for rdn in (peer or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


# --- the PKI's files ------------------------------------------------------------------------


def test_pki_layout_and_cert_shapes(pki: Pki) -> None:
    ca = load(pki.ca.cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    ca_pub = ca.public_key()
    assert isinstance(ca_pub, ec.EllipticCurvePublicKey)
    assert isinstance(ca_pub.curve, ec.SECP256R1)

    server = load(pki.server.cert)
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]

    other = load(pki.other_ca.cert)
    assert other.public_key() != ca.public_key()
    for key in (pki.ca.key, pki.server.key, pki.other_ca.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

    assert Pki.open(pki.dir) == pki


def test_host_key_is_an_openssh_keypair(pki: Pki) -> None:
    hk = pki.host_key("web-01")
    text = hk.private_key.read_bytes()
    assert text.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert stat.S_IMODE(hk.private_key.stat().st_mode) == 0o600
    assert hk.public_line.startswith("ssh-ed25519 AAAA") and hk.public_line.endswith(" web-01")
    assert hk.public_key.read_text().strip() == hk.public_line
    parsed = parse_public_line(hk.public_line)
    assert parsed.fingerprint == hk.fingerprint
    key = load_host_private_key(text)
    assert (
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        == parsed.raw
    )
    # OpenSSH itself reads the private key and derives the same public key.
    out = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(hk.private_key)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert out.stdout.split()[:2] == hk.public_line.split()[:2]
    # Asking again reuses the key.
    assert pki.host_key("web-01") == hk


def test_agent_cert_shape(pki: Pki) -> None:
    agent = pki.issue_agent("web-01")
    cert = load(agent.cert)
    cert.verify_directly_issued_by(load(pki.ca.cert))
    assert agent.cn == "agent-web-01.fleet.test"
    assert extract_machine_id(agent.cn, pki.cn_suffix) == "web-01"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == agent.cn
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [agent.cn]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    pub = cert.public_key()
    assert isinstance(pub, ed25519.Ed25519PublicKey)
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw == parse_public_line(agent.host_key.public_line).raw
    assert cert.not_valid_after_utc == agent.not_after

    foreign = pki.issue_agent("web-01", by_other_ca=True)
    assert foreign.cert != agent.cert
    load(foreign.cert).verify_directly_issued_by(load(pki.other_ca.cert))


def test_operator_cert_shape(pki: Pki) -> None:
    op = pki.issue_operator("alice", "laptop")
    cert = load(op.cert)
    assert op.cn == "operator-alice@laptop"
    assert cert.subject == x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "operator-alice@laptop"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "arcanesys"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "fleet"),
        ]
    )
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert span.days == 365 and span.seconds == 300
    cert.verify_directly_issued_by(load(pki.ca.cert))


# --- real TLS handshakes ----------------------------------------------------------------------


@dataclass
class EchoServer:
    """Answers `hello <peer CN>` on each TLS connection; stopped by `stop()`."""

    ctx: ssl.SSLContext
    sock: socket.socket = field(init=False)
    thread: threading.Thread = field(init=False)
    stopping: threading.Event = field(default_factory=threading.Event)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(5)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as conn:
                    conn.recv(64)
                    cn = peer_cn(conn.getpeercert())
                    conn.sendall(f"hello {cn or '-'}\n".encode())
            except (OSError, ssl.SSLError) as exc:
                self.failures.append(type(exc).__name__)
            finally:
                raw.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.sock.close()
        assert not self.thread.is_alive()


@pytest.fixture
def echo(pki: Pki) -> Iterator[EchoServer]:
    server = EchoServer(pki.server_context())
    yield server
    server.stop()


def talk(port: int, ctx: ssl.SSLContext) -> bytes:
    """Send a line, return the reply: b"" or an exception when the server refused us."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        conn.sendall(b"ping\n")
        return conn.recv(256)


def refused(port: int, ctx: ssl.SSLContext) -> bool:
    try:
        reply = talk(port, ctx)
    except (OSError, ssl.SSLError):
        return True
    return not reply.startswith(b"hello")


def test_handshake_with_an_issued_agent_cert(pki: Pki, echo: EchoServer) -> None:
    agent = pki.issue_agent("web-02")
    assert talk(echo.port, pki.client_context(agent)) == b"hello agent-web-02.fleet.test\n"
    op = pki.issue_operator("bob", "desk")
    assert talk(echo.port, pki.client_context(op)) == b"hello operator-bob@desk\n"


def test_cert_from_another_ca_is_rejected(pki: Pki, echo: EchoServer) -> None:
    foreign = pki.issue_agent("web-03", by_other_ca=True)
    # TLS 1.3: the server rejects after the client thinks the handshake is done.
    assert refused(echo.port, pki.client_context(foreign))
    # TLS 1.2: the handshake itself fails.
    with pytest.raises(ssl.SSLError):
        talk(echo.port, pki.client_context(foreign, max_version=ssl.TLSVersion.TLSv1_2))
    foreign_op = pki.issue_operator("eve", "x", by_other_ca=True)
    assert refused(echo.port, pki.client_context(foreign_op))
    # No client cert at all.
    assert refused(echo.port, pki.client_context())
    # The server still serves a good client afterwards, and saw the failures.
    agent = pki.issue_agent("web-03")
    assert talk(echo.port, pki.client_context(agent)) == b"hello agent-web-03.fleet.test\n"
    assert len(echo.failures) >= 3


def test_client_must_trust_the_server_ca(pki: Pki, echo: EchoServer) -> None:
    agent = pki.issue_agent("web-04")
    ctx = client_ssl_context(pki.other_ca.cert, cert=agent.cert, key=agent.key)
    with pytest.raises(ssl.SSLCertVerificationError):
        talk(echo.port, ctx)


async def test_aiohttp_mtls_with_pki_contexts(pki: Pki) -> None:
    async def whoami(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        return web.json_response({"cn": peer_cn(peer)})

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(
        runner, "127.0.0.1", 0, ssl_context=pki.server_context(require_client_cert=False)
    )
    await site.start()
    try:
        port = runner.addresses[0][1]
        url = f"https://127.0.0.1:{port}/whoami"
        agent = pki.issue_agent("web-05")
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=pki.client_context(agent)) as resp:
                assert resp.status == 200
                assert await resp.json() == {"cn": "agent-web-05.fleet.test"}
            # CERT_OPTIONAL (the CP's mode, for /v1/enroll): no cert, no CN.
            async with session.get(url, ssl=pki.client_context()) as resp:
                assert await resp.json() == {"cn": None}
            foreign = pki.issue_agent("web-05", by_other_ca=True)
            with pytest.raises(aiohttp.ClientError):
                async with session.get(url, ssl=pki.client_context(foreign)) as resp:
                    await resp.read()
    finally:
        await runner.cleanup()


# --- the forge --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forge_tls(tmp_path_factory: pytest.TempPathFactory) -> ForgeTls:
    return ForgeTls.create(tmp_path_factory.mktemp("forge-tls"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "releases").mkdir(parents=True)
    (root / "releases" / "fleet.resolved.json").write_bytes(FILE_BODY)
    (tmp_path / "secret.txt").write_text("outside the repo\n")
    return root


@pytest.fixture
def forge(repo: Path, forge_tls: ForgeTls) -> Iterator[Forge]:
    with Forge.start(repo, tls=forge_tls) as f:
        yield f


@pytest.fixture
def no_env_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def get(
    url: str, ctx: ssl.SSLContext, *, token: str | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_forge_serves_raw_and_plain_paths(forge: Forge) -> None:
    ctx = forge.tls.client_context()
    url = forge.url("releases/fleet.resolved.json")
    assert url == (
        f"https://127.0.0.1:{forge.port}/fleet/fleet/raw/branch/main/releases/fleet.resolved.json"
    )
    assert get(url, ctx) == (200, FILE_BODY)
    assert get(forge.plain_url("releases/fleet.resolved.json"), ctx) == (200, FILE_BODY)
    assert get(forge.url("releases/missing.json"), ctx)[0] == 404
    assert get(forge.base_url + "/fleet/fleet/raw/branch/other/releases/x", ctx)[0] == 404
    assert get(forge.base_url + "/", ctx)[0] == 404


def test_forge_does_not_serve_outside_its_directory(forge: Forge) -> None:
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/releases/%2e%2e/%2e%2e/secret.txt"):
        conn = http.client.HTTPSConnection(
            "127.0.0.1", forge.port, context=forge.tls.client_context(), timeout=5
        )
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 404, path
            assert b"outside" not in resp.read()
        finally:
            conn.close()


def test_forge_cert_verifies_only_with_its_ca(
    forge: Forge, no_env_trust: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = forge.url("releases/fleet.resolved.json")
    with pytest.raises(urllib.error.URLError) as err:
        get(url, ssl.create_default_context())
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)
    assert get(url, ssl.create_default_context(cafile=str(forge.ca_cert))) == (200, FILE_BODY)
    # The way a CP host trusts a private forge: the system store via SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(forge.ca_cert))
    assert get(url, ssl.create_default_context()) == (200, FILE_BODY)


async def test_forge_with_aiohttp(forge: Forge, no_env_trust: None) -> None:
    url = forge.url("releases/fleet.resolved.json")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(url) as resp:
                await resp.read()
        async with session.get(url, ssl=forge.tls.client_context()) as resp:
            assert resp.status == 200
            assert await resp.read() == FILE_BODY


def test_forge_bearer_token(repo: Path, forge_tls: ForgeTls) -> None:
    with Forge.start(repo, tls=forge_tls, token="s3cret") as forge:
        ctx = forge.tls.client_context()
        url = forge.url("releases/fleet.resolved.json")
        assert get(url, ctx)[0] == 401
        assert get(url, ctx, token="wrong")[0] == 401
        assert get(url, ctx, token="s3cret") == (200, FILE_BODY)
        assert [(r.status, r.authorization) for r in forge.requests] == [
            (401, None),
            (401, "Bearer wrong"),
            (200, "Bearer s3cret"),
        ]
        forge.set_token(None)
        assert get(url, ctx) == (200, FILE_BODY)


def test_forge_fail_and_close_modes(forge: Forge) -> None:
    ctx = forge.tls.client_context()
    url = forge.url("releases/fleet.resolved.json")
    forge.fail()
    assert get(url, ctx)[0] == 503
    forge.close_connections()
    with pytest.raises((OSError, http.client.HTTPException)):
        get(url, ctx)
    forge.heal()
    assert get(url, ctx) == (200, FILE_BODY)
    assert [r.status for r in forge.requests] == [503, 0, 200]


def test_forge_hang_mode_times_clients_out(forge: Forge) -> None:
    ctx = forge.tls.client_context()
    url = forge.url("releases/fleet.resolved.json")
    forge.hang()
    started = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        get(url, ctx, timeout=0.3)
    assert time.monotonic() - started >= 0.3
    forge.heal()
    assert get(url, ctx) == (200, FILE_BODY)


def test_forge_stop_releases_hanging_requests(repo: Path, forge_tls: ForgeTls) -> None:
    before = set(threading.enumerate())
    forge = Forge.start(repo, tls=forge_tls)
    outcome: list[object] = []

    def client() -> None:
        try:
            outcome.append(
                get(
                    forge.url("releases/fleet.resolved.json"),
                    forge_tls.client_context(),
                    timeout=30,
                )
            )
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(exc)

    forge.hang()
    thread = threading.Thread(target=client)
    thread.start()
    try:
        forge.wait_held(1)
        started = time.monotonic()
        forge.stop()
        assert time.monotonic() - started < 5
    finally:
        forge.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], OSError | http.client.HTTPException)
    assert set(threading.enumerate()) - before == set()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", forge.port), timeout=2).close()


def test_forge_stop_leaves_no_threads(repo: Path, forge_tls: ForgeTls) -> None:
    before = set(threading.enumerate())
    forge = Forge.start(repo, tls=forge_tls)
    keep_alive = http.client.HTTPSConnection(
        "127.0.0.1", forge.port, context=forge_tls.client_context(), timeout=5
    )
    silent = socket.create_connection(("127.0.0.1", forge.port), timeout=5)  # no handshake
    try:
        keep_alive.request("GET", "/releases/fleet.resolved.json")
        assert keep_alive.getresponse().read() == FILE_BODY
        deadline = time.monotonic() + 5
        while forge.open_connections < 2:
            assert time.monotonic() < deadline, f"{forge.open_connections} connections open"
            time.sleep(0.01)
        started = time.monotonic()
        forge.stop()
        assert time.monotonic() - started < 2
        assert forge.open_connections == 0
        assert set(threading.enumerate()) - before == set()
    finally:
        forge.stop()
        keep_alive.close()
        silent.close()


def test_curl_with_the_forge_ca(repo: Path, forge_tls: ForgeTls, no_env_trust: None) -> None:
    with Forge.start(repo, tls=forge_tls, token="tok") as forge:
        url = forge.url("releases/fleet.resolved.json")
        ok = subprocess.run(
            ["curl", "-sS", "--fail", "--cacert", str(forge.ca_cert),
             "-H", "Authorization: Bearer tok", url],
            capture_output=True, timeout=30,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == FILE_BODY
        untrusted = subprocess.run(
            ["curl", "-sS", "-H", "Authorization: Bearer tok", url],
            capture_output=True, timeout=30, env={**os.environ, "CURL_CA_BUNDLE": ""},
        )  # fmt: skip
        assert untrusted.returncode == 60  # peer certificate cannot be authenticated
        no_token = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
             "--cacert", str(forge.ca_cert), url],
            capture_output=True, timeout=30,
        )  # fmt: skip
        assert no_token.stdout == b"401"


def test_forge_as_a_process(repo: Path, forge_tls: ForgeTls, tmp_path: Path) -> None:
    ctx = forge_tls.client_context()
    proc = ForgeProcess.start(repo, tls=forge_tls, token="t", stderr=tmp_path / "forge.log")
    try:
        url = proc.url("releases/fleet.resolved.json")
        assert proc.pid != os.getpid() and proc.proc.poll() is None
        assert get(url, ctx, token="t") == (200, FILE_BODY)
        assert get(url, ctx)[0] == 401
        proc.set_mode(ForgeMode.FAIL)
        assert get(url, ctx, token="t")[0] == 503
        proc.set_mode(ForgeMode.HANG)
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            get(url, ctx, token="t", timeout=0.3)
        proc.set_mode(ForgeMode.OK)
        assert get(url, ctx, token="t") == (200, FILE_BODY)
        port = proc.port
        proc.kill()
        assert proc.proc.returncode is not None
        with pytest.raises(urllib.error.URLError):
            get(url, ctx, token="t", timeout=2)
        # Restarted on the same port, it serves again.
        proc = ForgeProcess.start(repo, tls=forge_tls, port=port)
        assert proc.port == port
        assert get(url, ctx) == (200, FILE_BODY)
    finally:
        proc.stop()
    assert proc.proc.returncode is not None
