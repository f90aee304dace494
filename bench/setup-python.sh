#!/usr/bin/env bash
# Create the Python reference environment in bench/.venv and install the pinned packages from
# bench/requirements.txt. Idempotent: re-running only installs what is missing or changed.
#
#   bash bench/setup-python.sh            # create/update bench/.venv
#   bench/.venv/bin/python -c 'import torch, transformers'
#
# PYTHON selects the interpreter (default python3, >= 3.10).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
py="${PYTHON:-python3}"

"$py" - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"setup-python.sh: Python >= 3.10 needed, found {sys.version.split()[0]}")
PY

if [ ! -x "$venv/bin/python" ]; then
    echo "setup-python.sh: creating $venv"
    "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"
"$venv/bin/python" - <<'PY'
from importlib.metadata import version
import torch, transformers, tokenizers, gguf, numpy, safetensors, peft  # noqa: F401 (import check)
names = ["torch", "transformers", "tokenizers", "gguf", "numpy", "safetensors", "peft"]
print("setup-python.sh: ok:", " | ".join(f"{n} {version(n)}" for n in names))
PY
