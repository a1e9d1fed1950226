"""TPM-held release keys (tpm2-pytss ESAPI) and a software TPM for CI (swtpm)."""

from .errors import TpmError
from .key import DEFAULT_HANDLE, TpmIdentity, TpmKey, parse_handle
from .swtpm import Swtpm

__all__ = ["DEFAULT_HANDLE", "Swtpm", "TpmError", "TpmIdentity", "TpmKey", "parse_handle"]
