#!/usr/bin/env bash
# One-step set-up: a virtual environment in .venv with rbgp and everything its tests need.
# Safe to run again. torch is installed first, pinned, so that pip never resolves a plain `torch`
# requirement to the multi-GB CUDA wheels on a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${RBGP_TORCH_VERSION:-2.13.0}

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" 2>/dev/null; then
    echo "[setup] installing torch==$TORCH_VERSION"
    "$VPY" -m pip install -q "torch==$TORCH_VERSION"
fi
"$VPY" -m pip install -q -e ".[test,dev]"
if ! "$VPY" -c "import triton" 2>/dev/null; then
    # Triton runs the GPU kernels' code on the CPU under TRITON_INTERPRET=1 (used by the tests).
    "$VPY" -m pip install -q "triton" || echo "[setup] warning: triton not installed; Triton tests will be skipped"
fi

# Debian packages for the real data: Fashion-MNIST (demos) and the King James Bible text with its reader
# `bible` (the language-model conversion benchmarks). Tests never need them.
apt_install() {  # PACKAGE WHAT
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" -ne 0 ]; then
            if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
        fi
        if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
            echo "[setup] installing Debian package $1"
            $SUDO apt-get update -qq >/dev/null || true
            DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$1" >/dev/null \
                || echo "[setup] warning: could not install $1; $2 need it"
        else
            echo "[setup] note: $1 missing; run 'sudo apt-get install $1' ($2 need it)"
        fi
    else
        echo "[setup] note: $1 missing and no apt-get; see README (Data)"
    fi
}
[ -d /usr/share/datasets/fashion-mnist ] || apt_install dataset-fashion-mnist "demos"
command -v bible >/dev/null 2>&1 || apt_install bible-kjv "the language-model benchmarks"
echo "[setup] ok: $("$VPY" -c 'import torch, rbgp; print("rbgp", rbgp.__version__, "torch", torch.__version__)')"
