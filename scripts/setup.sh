#!/usr/bin/env bash
# Creates .venv and installs crowdwatch into it. Idempotent.
#
# torch is installed first and deliberately: a machine with an NVIDIA GPU gets
# PyPI's CUDA build; a machine without one gets a CPU build (a local wheel when
# pip's find-links has torch 2.13.0, else PyTorch's CPU index), instead of the
# multi-GB CUDA build a bare "torch" requirement would pull.
#
# ONNX Runtime likewise: the project requires the CPU build (onnxruntime); a
# machine with an NVIDIA GPU gets onnxruntime-gpu (the `gpu` extra) instead.
# Both install the same `onnxruntime` module, so only one may stay.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${1:-}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null

GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  GPU=1
fi

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ "$GPU" = 1 ]; then
    echo "setup: NVIDIA GPU found, installing the CUDA build of torch"
    $PIP install -q "torch>=2.4"
  elif $PIP install -q --dry-run --no-index --no-deps "torch==2.13.0" >/dev/null 2>&1; then
    echo "setup: no GPU; installing the local CPU build of torch 2.13.0"
    $PIP install -q "torch==2.13.0"
  else
    echo "setup: no GPU; installing the CPU build of torch from download.pytorch.org"
    $PIP install -q torch --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
  fi
fi

$PIP install -q -e ".${EXTRAS:+[$EXTRAS]}"

installed() { $PIP show -q "$1" >/dev/null 2>&1; }
if [ "$GPU" = 1 ]; then
  echo "setup: NVIDIA GPU found, installing onnxruntime-gpu in place of onnxruntime"
  installed onnxruntime && $PIP uninstall -q -y onnxruntime
  # reinstalled: removing the CPU package deleted the module files the two share
  $PIP install -q --force-reinstall --no-deps "onnxruntime-gpu>=1.17"
elif installed onnxruntime-gpu; then
  echo "setup: no GPU; replacing onnxruntime-gpu with the CPU build of onnxruntime"
  $PIP uninstall -q -y onnxruntime-gpu
  $PIP install -q --force-reinstall --no-deps "onnxruntime>=1.17"
fi
echo "setup: done (.venv)"
