"""TPM signing benchmark: release signatures per second through tpm2-pytss, and the
share of them that come out high-s (s > n/2, which the verifier must normalise).

Every signature is checked with the production verifier (`verify_signature`) but
the verify time is not counted. Against a swtpm it starts itself (default) or a
lab TPM:

    python benchmarks/tpm_sign.py                       # 200 signatures, fresh swtpm
    python benchmarks/tpm_sign.py -n 1000
    python benchmarks/tpm_sign.py --tcti device:/dev/tpmrm0 --handle 0x81010002

Exit 1 with one line when no TPM is to be had (no swtpm, no device); exit 1 too when
a signature does not verify.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet_sim.fleetgen import is_high_s
from hw.tpm import DEFAULT_HANDLE, Swtpm, TpmError, TpmKey, parse_handle
from nixfleet.core.signing import verify_signature


def bench(key: TpmKey, count: int) -> dict[str, object]:
    messages = [os.urandom(512) for _ in range(count)]
    started = time.perf_counter()
    sigs = [key.sign(m) for m in messages]
    wall = time.perf_counter() - started
    bad = sum(
        not verify_signature(key.public_key(), m, s) for m, s in zip(messages, sigs, strict=True)
    )
    high = sum(is_high_s(s) for s in sigs)
    ident = key.identity()
    return {
        "tpm": ident.line(),
        "tcti": key.tcti,
        "signatures": count,
        "wall_s": round(wall, 3),
        "signatures_per_s": round(count / wall, 1),
        "ms_per_signature": round(1000 * wall / count, 3),
        "high_s": high,
        "high_s_share": round(high / count, 3),
        "not_verifying": bad,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--count", type=int, default=200)
    p.add_argument("--tcti", help="a lab TPM (default: start a swtpm)")
    p.add_argument("--handle", default=f"{DEFAULT_HANDLE:#x}")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = p.parse_args()
    try:
        with ExitStack() as stack:
            tcti = args.tcti
            if tcti is None:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="tpm-bench-"))
                tcti = stack.enter_context(Swtpm.start(Path(tmp) / "swtpm")).tcti
            key = stack.enter_context(TpmKey.open(tcti, parse_handle(args.handle)))
            key.sign(b"warm-up")
            res = bench(key, args.count)
    except TpmError as exc:
        print(f"tpm_sign: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res))
    else:
        print(f"TPM: {res['tpm']} ({res['tcti']})")
        print(
            f"{res['signatures']} signatures in {res['wall_s']} s: "
            f"{res['signatures_per_s']} signatures/s ({res['ms_per_signature']} ms each)"
        )
        print(f"high-s: {res['high_s']} of {res['signatures']} ({res['high_s_share']:.0%})")
        if res["not_verifying"]:
            print(f"NOT VERIFYING: {res['not_verifying']}")
    return 1 if res["not_verifying"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
