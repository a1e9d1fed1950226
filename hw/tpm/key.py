"""A persistent ECC P-256 signing key in a TPM, through tpm2-pytss ESAPI.

`TpmKey.open(tcti, handle)` loads the key persisted at `handle`, or creates it (a
primary key under the owner hierarchy, made persistent with EvictControl) when the
handle is empty. `sign(message)` hashes with SHA-256 and calls TPM2_Sign (ECDSA); the
TPM's `r‖s` comes back UNCHANGED: s > n/2 about half the time, the seed 000
`BadSignature` failure mode the production verifier normalises (docs/protocol.md §3.2).
`public_key()` is the trust.json form: 64 raw bytes `X‖Y` (nixfleet.core.signing).

TCTI strings are tpm2-tss's: `device:/dev/tpmrm0` on a lab host, `swtpm:host=…,port=…`
for the simulator (`mssim:` does not speak swtpm's protocol). The ESAPI calls follow
the recipe measured in docs/environment.md (TPM: swtpm).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from dataclasses import dataclass
from typing import Any

from nixfleet.core.signing import ECDSA_P256, PublicKey, parse_public_key

from .errors import TpmError

DEFAULT_HANDLE = 0x81010002
"""Where `keygen --tpm` persists the release key unless told otherwise."""
PERSISTENT_RANGE = range(0x81000000, 0x82000000)
COORD_LEN = 32
"""P-256 coordinates and r, s: 32 bytes big-endian each."""

# TPM2_PT_FIXED properties (TPM 2.0 Part 2 §6.13); tpm2-pytss names only the first.
PT_MANUFACTURER = 0x105
PT_VENDOR_STRING = (0x106, 0x107, 0x108, 0x109)
PT_FIRMWARE_VERSION = (0x10B, 0x10C)


@dataclass(frozen=True, slots=True)
class TpmIdentity:
    """Which TPM made a result: what a lab report names."""

    manufacturer: str
    vendor: str
    firmware: str

    def line(self) -> str:
        return f"{self.manufacturer} {' '.join(self.vendor.split())} firmware {self.firmware}"


def parse_handle(text: str) -> int:
    """`0x81010002` (or decimal) inside the persistent range; TpmError otherwise."""
    try:
        handle = int(text, 0)
    except ValueError:
        raise TpmError(f"--tpm-handle {text!r}: not a number (e.g. 0x81010002)") from None
    if handle not in PERSISTENT_RANGE:
        raise TpmError(f"--tpm-handle {text}: not a persistent handle (0x81000000-0x81ffffff)")
    return handle


def check_tcti(tcti: str) -> None:
    """The failures tpm2-tss reports badly, named before it is asked: an empty TCTI,
    a missing TPM device."""
    if not tcti.strip():
        raise TpmError("empty TCTI (e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321)")
    name, _, conf = tcti.partition(":")
    if name == "device":
        path = conf or "/dev/tpmrm0"
        if not os.path.exists(path):
            raise TpmError(f"no TPM device {path} (is the TPM enabled and tpm_tis loaded?)")
        if not os.access(path, os.R_OK | os.W_OK):
            raise TpmError(f"TPM device {path} is not read-writable by this user (tss group?)")


def _esapi() -> Any:
    # tpm2-tss logs connection failures to stderr itself; our TpmError says it in one
    # line, so keep its own lines out unless the caller asked for them.
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    try:
        from tpm2_pytss import ESAPI
    except ImportError as exc:
        raise TpmError(
            f"tpm2-pytss is not importable ({exc}); install it (needs libtss2-dev)"
        ) from None
    return ESAPI


class TpmKey:
    """An open TPM connection and the P-256 key at `handle`; close it (or use `with`).

    Satisfies `fleet_sim.fleetgen.Signer` with `raw_s = True`: its signatures keep the
    s the TPM drew. One connection is used by one thread at a time (swtpm serves one
    client), so `sign` holds a lock."""

    algorithm = ECDSA_P256
    raw_s = True

    def __init__(self, ctx: Any, key: Any, public: PublicKey, tcti: str, handle: int) -> None:
        self._ctx = ctx
        self._key = key
        self._public = public
        self._lock = threading.Lock()
        self.tcti = tcti
        self.handle = handle
        self.created = False

    @classmethod
    def open(cls, tcti: str, handle: int = DEFAULT_HANDLE, *, create: bool = True) -> TpmKey:
        check_tcti(tcti)
        if handle not in PERSISTENT_RANGE:
            raise TpmError(f"TPM handle {handle:#x} is not a persistent handle")
        esapi = _esapi()
        from tpm2_pytss import TSS2_Exception

        try:
            ctx = esapi(tcti)
        except TSS2_Exception as exc:
            raise TpmError(f"cannot reach a TPM at {tcti} ({exc})") from None
        try:
            key, created = _load_or_create(ctx, handle, create=create, tcti=tcti)
            tk = cls(ctx, key, _public_of(ctx, key, handle), tcti, handle)
            tk.created = created
            return tk
        except TSS2_Exception as exc:
            ctx.close()
            raise TpmError(f"TPM at {tcti}: {exc}") from None
        except BaseException:
            ctx.close()
            raise

    def __enter__(self) -> TpmKey:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        # The key is persistent: nothing to flush, only the ESYS_TR handle to drop.
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None

    def public_key(self) -> PublicKey:
        return self._public

    def public_key_json(self) -> dict[str, str]:
        """The trust.json key object `{"algorithm", "public"}`."""
        return {"algorithm": self._public.algorithm, "public": self._public.b64}

    def sign(self, message: bytes) -> bytes:
        """TPM2_Sign over SHA-256(message): raw `r‖s`, s exactly as the TPM drew it."""
        from tpm2_pytss import TSS2_Exception
        from tpm2_pytss.constants import TPM2_ALG, TPM2_RH, TPM2_ST
        from tpm2_pytss.types import TPMT_SIG_SCHEME, TPMT_TK_HASHCHECK

        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = TPM2_ALG.SHA256
        # A null ticket: the digest was not computed by the TPM (fine: the key is not
        # restricted, TPM 2.0 Part 3 §20.2).
        ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
        digest = hashlib.sha256(message).digest()
        with self._lock:
            if self._ctx is None:
                raise TpmError(f"TPM at {self.tcti}: the key was closed")
            try:
                sig = self._ctx.sign(self._key, digest, scheme, ticket)
            except TSS2_Exception as exc:
                raise TpmError(f"TPM at {self.tcti}: TPM2_Sign failed ({exc})") from None
        r = bytes(sig.signature.ecdsa.signatureR)
        s = bytes(sig.signature.ecdsa.signatureS)
        # TPM2B buffers drop no leading zeros in practice, but pad as the wire form wants.
        return r.rjust(COORD_LEN, b"\0") + s.rjust(COORD_LEN, b"\0")

    def identity(self) -> TpmIdentity:
        """Manufacturer, vendor string and firmware version (TPM2_GetCapability)."""
        from tpm2_pytss.constants import TPM2_CAP

        with self._lock:
            _more, data = self._ctx.get_capability(TPM2_CAP.TPM_PROPERTIES, PT_MANUFACTURER, 8)
        props = {int(p.property): int(p.value) for p in data.data.tpmProperties}
        return identity_of(props)


def identity_of(props: dict[int, int]) -> TpmIdentity:
    def text(*keys: int) -> str:
        raw = b"".join(props.get(k, 0).to_bytes(4, "big") for k in keys)
        return raw.replace(b"\0", b"").decode("ascii", "replace").strip()

    v1, v2 = (props.get(k, 0) for k in PT_FIRMWARE_VERSION)
    return TpmIdentity(
        manufacturer=text(PT_MANUFACTURER) or f"{props.get(PT_MANUFACTURER, 0):#010x}",
        vendor=text(*PT_VENDOR_STRING),
        # TPM2_PT_FIRMWARE_VERSION_1/2: two vendor-defined 32-bit words, shown in hex
        # as they are (vendors split them differently; swtpm's first is a date).
        firmware=f"{v1:08x}.{v2:08x}",
    )


def _load_or_create(ctx: Any, handle: int, *, create: bool, tcti: str) -> tuple[Any, bool]:
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPM2_RC, TPM2_SU, TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_PUBLIC

    try:
        ctx.startup(TPM2_SU.CLEAR)
    except TSS2_Exception as exc:
        if exc.rc != TPM2_RC.INITIALIZE:  # already started: harmless
            raise
    try:
        return ctx.tr_from_tpmpublic(handle), False
    except TSS2_Exception as exc:
        if not _is_absent(exc):
            raise
    if not create:
        raise TpmError(
            f"TPM at {tcti}: no key at handle {handle:#x} (create it: nixfleet keygen --tpm)"
        )
    # A primary key of the owner hierarchy: the same template always yields the same
    # key from the same owner seed, so no key blob has to be stored anywhere.
    # The attributes are explicit: the template's defaults include `decrypt`.
    attrs = (
        TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
        | TPMA_OBJECT.SIGN_ENCRYPT
    )
    template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=attrs)
    transient, *_ = ctx.create_primary(None, template, ESYS_TR.OWNER)
    try:
        persistent = ctx.evict_control(ESYS_TR.OWNER, transient, handle)
    finally:
        ctx.flush_context(transient)
    return persistent, True


def _is_absent(exc: Any) -> bool:
    """TPM_RC_HANDLE (any parameter/handle index) from ReadPublic: nothing at the handle."""
    from tpm2_pytss.constants import TPM2_RC

    return bool((int(exc.rc) & 0x3F) == (int(TPM2_RC.HANDLE) & 0x3F) and int(exc.rc) & 0x80)


def _public_of(ctx: Any, key: Any, handle: int) -> PublicKey:
    from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPMA_OBJECT

    pub, _name, _qname = ctx.read_public(key)
    area = pub.publicArea
    if area.type != TPM2_ALG.ECC or area.parameters.eccDetail.curveID != TPM2_ECC.NIST_P256:
        raise TpmError(f"TPM handle {handle:#x} holds no ECC P-256 key")
    if not area.objectAttributes & TPMA_OBJECT.SIGN_ENCRYPT:
        raise TpmError(f"TPM handle {handle:#x} holds a key that cannot sign")
    x = bytes(area.unique.ecc.x).rjust(COORD_LEN, b"\0")
    y = bytes(area.unique.ecc.y).rjust(COORD_LEN, b"\0")
    # Through the production parser: the same on-curve check trust.json gets.
    return parse_public_key(ECDSA_P256, base64.b64encode(x + y).decode("ascii"))
