# Shared by scripts/run and scripts/test: create .venv and install a requirements
# file into it, skipping pip when the file has not changed since the last install.
ensure_venv() {
  local req="$1"
  local python="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
  fi
  local stamp=".venv/.installed-$(basename "$req")"
  local digest
  digest=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    echo "Installing $req into .venv ..." >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
    echo "$digest" > "$stamp"
  fi
}
