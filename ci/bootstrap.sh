#!/usr/bin/env bash
# Make this checkout runnable on a fresh Debian machine. Idempotent and quick when
# nothing changed: Debian packages (only when root and missing), a virtualenv in
# .venv, and the project with its test extra installed editable into it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

debs=(python3 python3-venv gcc nix-bin swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config
      openssh-server sqlite3 curl jq)
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "bootstrap: not root; missing Debian packages left alone: ${missing[*]}" >&2
  fi
fi

python=${PYTHON:-python3}
if [ ! -x "$root/.venv/bin/python" ]; then
  echo "bootstrap: creating $root/.venv" >&2
  "$python" -m venv "$root/.venv"
fi

# Reinstall only when the dependency declaration changed.
stamp="$root/.venv/.bootstrap-stamp"
want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing Python packages into .venv" >&2
  "$root/.venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$root/.venv/bin/python" -m pip install -q -e "$root[test]"
  echo "$want" > "$stamp"
fi
