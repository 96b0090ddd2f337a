#!/usr/bin/env bash
# Does R² hold in bf16? The quick config trained twice on the default dataset, same seed and budget: fp32, then the
# forward under bf16 autocast. From the repository root (about 15 min a run on 2 CPU cores):
#
#   bash scripts/bf16_check.sh                      # DEVICE=cpu by default; DEVICE=cuda on a GPU
#
# Prints each run's validation and test R² (window and newest bin) and B→S r; runs go to /tmp/q-fp32, /tmp/q-bf16.
set -euo pipefail

PY=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-cpu}
for p in fp32 bf16; do
  "$PY" -m alignnet train quick --data data/sim-default --out "/tmp/q-$p" --device "$DEVICE" \
    --set pretrain.precision=$p --set finetune.precision=$p > "/tmp/q-$p.log" 2>&1 \
    || { tail -20 "/tmp/q-$p.log"; exit 1; }
  "$PY" -c "import json; d = json.load(open('/tmp/q-$p/artifact/config.json'))
print('$p', {k: round(v, 4) for k, v in d['metrics'].items() if v is not None})"
done
