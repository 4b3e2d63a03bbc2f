#!/usr/bin/env bash
# Set up a machine for prunefuse-hf: a virtualenv with the CPU torch wheel installed FIRST (a plain
# torch requirement would otherwise resolve to a CUDA build with several GB of packages), then the
# package with its dev extras, then the Fashion-MNIST data package when apt and root are available.
# Label Studio goes into its own virtualenv (about 1 GB of Django and friends stay out of the package's), with a
# migrated data directory the tests copy to start a real server in seconds, under the upper bounds in
# scripts/label-studio-constraints.txt (releases of its dependencies that break it); set PRUNEFUSE_SKIP_LABEL_STUDIO=1
# to leave it out (its tests are then skipped, saying why).
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

LS_VENV=${LABEL_STUDIO_VENV:-.label-studio-venv}
LS_SPEC=${PRUNEFUSE_LABEL_STUDIO_SPEC:-label-studio==1.23.2}
LS_CONSTRAINTS=scripts/label-studio-constraints.txt
if [ "${PRUNEFUSE_SKIP_LABEL_STUDIO:-0}" != 1 ]; then
    ls_stamp="$LS_VENV/.prunefuse-setup"
    ls_wanted="$LS_SPEC $(sha256sum "$LS_CONSTRAINTS" | cut -d' ' -f1)"
    if [ ! -f "$ls_stamp" ] || [ "$(cat "$ls_stamp")" != "$ls_wanted" ]; then
        echo "[setup] installing $LS_SPEC into $LS_VENV (about 2 minutes and 1 GB, once)"
        rm -f "$ls_stamp"  # written again only once the install and `label-studio init` succeed
        if { [ -x "$LS_VENV/bin/python" ] || "$PYTHON" -m venv "$LS_VENV"; } \
            && "$LS_VENV/bin/pip" install -q "$LS_SPEC" -c "$LS_CONSTRAINTS" 2> >(grep -v "is ignored: it is neither" >&2) \
            && rm -rf "$LS_VENV/data-template" \
            && LABEL_STUDIO_BASE_DATA_DIR="$LS_VENV/data-template" LATEST_VERSION_CHECK=false \
                COLLECT_ANALYTICS=false "$LS_VENV/bin/label-studio" init -q >"$LS_VENV/init.log" 2>&1; then
            echo "$ls_wanted" > "$ls_stamp"
        else
            echo "[setup] Label Studio could not be installed into $LS_VENV (see the output above and" \
                "$LS_VENV/init.log); the tests that need a Label Studio server will be skipped." >&2
        fi
    fi
fi
