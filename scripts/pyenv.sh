#!/usr/bin/env bash
# Creates (once) the Python environment the scripts use, with pinned reference tools, and prints
# the path of its python. Lives in target/pyenv, so `cargo clean` removes it too.
#
#   py=$(scripts/pyenv.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
env=$root/target/pyenv
requirements="gguf==0.19.0 kubernetes-validate==1.37.0 yamllint==1.38.0 openai==3.57.0"
stamp=$env/.requirements
if [ ! -x "$env/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$requirements" ]; then
    python3 -m venv "$env" >&2
    # shellcheck disable=SC2086
    "$env/bin/python" -m pip install --quiet --disable-pip-version-check $requirements >&2
    echo "$requirements" > "$stamp"
fi
echo "$env/bin/python"
