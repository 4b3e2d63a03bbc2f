#!/usr/bin/env bash
# Set up a machine for prunefuse-hf: a virtualenv with the CPU torch wheel installed FIRST (a plain
# torch requirement would otherwise resolve to a CUDA build with several GB of packages), then the
# package with its dev extras, then the Fashion-MNIST data package when apt and root are available.
# Re-running is cheap: the install step is skipped while pyproject.toml and the torch pin are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${PRUNEFUSE_TORCH_SPEC:-torch==2.13.0}
FASHION_MNIST_DIR=/usr/share/datasets/fashion-mnist

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.prunefuse-setup"
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    echo "[setup] installing $TORCH_SPEC"
    "$VENV/bin/pip" install -q "$TORCH_SPEC" 2> >(grep -v "is ignored: it is neither" >&2)
    echo "[setup] installing prunefuse-hf[dev]"
    "$VENV/bin/pip" install -q -e ".[dev]" 2> >(grep -v "is ignored: it is neither" >&2)
    echo "$wanted" > "$stamp"
fi

if [ ! -d "$FASHION_MNIST_DIR" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing the Debian package dataset-fashion-mnist"
        apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "[setup] Fashion-MNIST is not installed and this is not root: run" \
            "'sudo apt-get install dataset-fashion-mnist' (tests that need it are skipped)." >&2
    fi
fi
