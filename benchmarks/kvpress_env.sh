#!/usr/bin/env bash
# The side environment for benchmarks/vs_kvpress.py: NVIDIA's kvpress next to corehead, never a corehead
# dependency. kvpress 0.5.5 pins transformers<5.3 while corehead needs >=5.24, so it lives in its own venv,
# .venv-kvpress/ at the repository root (git-ignored).
#
#     bash benchmarks/kvpress_env.sh                 # create it, or check it (idempotent)
#     KVPRESS_PYTHON=python3.11 bash benchmarks/kvpress_env.sh
#     KVPRESS_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash benchmarks/kvpress_env.sh   # CPU-only torch
#
# torch is installed first, on its own (from KVPRESS_TORCH_INDEX when set, else wherever pip's configuration
# finds torch==2.13.0), and then held at that version by a constraint while kvpress and its pins come in, so
# kvpress's dependencies can never swap it for another build. Rerunning it installs nothing new when every pin
# is already there; it always ends by printing the versions the side environment holds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KVPRESS_VENV:-$ROOT/.venv-kvpress}"
PYTHON="${KVPRESS_PYTHON:-python3.11}"
TORCH="torch==2.13.0"
PINS=("kvpress==0.5.5" "transformers==5.2.0" "safetensors==0.8.0" "accelerate==1.15.0")

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "kvpress_env.sh: $PYTHON not found; set KVPRESS_PYTHON to a Python 3.10-3.12 interpreter" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $($PYTHON -V 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# torch on its own, so that the build (CPU or CUDA) is the one chosen here
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    if [ -n "${KVPRESS_TORCH_INDEX:-}" ]; then
        "${PIP[@]}" install "$TORCH" --index-url "$KVPRESS_TORCH_INDEX"
    else
        "${PIP[@]}" install "$TORCH"
    fi
fi
HELD="$(mktemp)"
trap 'rm -f "$HELD"' EXIT
"$VENV/bin/python" -c "import torch; print('torch==' + torch.__version__)" >"$HELD"

missing=0
for pin in "${PINS[@]}"; do
    name="${pin%%==*}"
    want="${pin##*==}"
    have="$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)"
    [ "$have" = "$want" ] || missing=1
done
if [ "$missing" = 1 ]; then
    "${PIP[@]}" install --constraint "$HELD" "${PINS[@]}"
else
    echo "every pin already installed in $VENV"
fi

"$VENV/bin/python" - <<'PY'
import importlib.metadata as m
import sys

import torch
import transformers
from packaging.version import Version

import kvpress  # noqa: F401  (fails here, not in the benchmark, if the install is broken)

print(f"side environment: {sys.prefix} (Python {sys.version.split()[0]})")
for name in ("torch", "transformers", "kvpress", "safetensors", "accelerate"):
    print(f"  {name}=={m.version(name)}")
print(f"  torch build: cuda={torch.version.cuda} available={torch.cuda.is_available()}")
assert Version(transformers.__version__) < Version("5.3"), f"kvpress 0.5.5 needs transformers<5.3, not {transformers.__version__}"
PY
