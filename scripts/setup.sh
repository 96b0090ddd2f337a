#!/usr/bin/env bash
# Create .venv and install AlignNet-BCI with everything it needs (CPU torch 2.13.0, spikingjelly without its
# torchvision/torchaudio requirements). GPU users: install your CUDA torch into .venv first, then run this;
# pip keeps a torch that already satisfies the pin. Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q --no-deps "spikingjelly==2.0.0"
.venv/bin/python -m pip install -q -e ".[dev]"
# the FALCON benchmark's evaluator (alignnet.clients.falcon); its own requirements are in the "falcon" extra
.venv/bin/python -m pip install -q --no-deps "falcon-challenge==1.0.2"
echo "AlignNet-BCI installed in .venv — activate with: source .venv/bin/activate"
