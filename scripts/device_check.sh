#!/usr/bin/env bash
# The GPU path's check in one short run (~10 min on an H100/H200), for a GPU machine with a CUDA torch and no
# internet. From the repository root:
#
#   bash scripts/device_check.sh --download   # here, with a package registry: the wheels that machine lacks,
#                                             # into .whl/device (git-ignored; ship it with the tree)
#   bash scripts/device_check.sh              # there: install them, then the CUDA tests, the training throughput
#                                             # and a small evaluation; every figure and log under $OUT
#
# Settings (environment): OUT (default runs/device), WHEELS (default .whl/device), PYTHON (default python3),
# DEVICE (default cuda), QUICK=1 (tiny sizes: a dry run of the whole script on any machine, in a minute or two),
# SKIP_INSTALL=1 (use what is installed), PY_VERSION (default 3.12: the GPU machine's Python, for --download).
set -euo pipefail

WHEELS=${WHEELS:-.whl/device}
OUT=${OUT:-runs/device}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}

# what the GPU machine's Python lacks among this project's imports (its torch, numpy, scipy, scikit-learn, onnx,
# onnxruntime, safetensors, pyyaml, tqdm and matplotlib are used as they are), plus pytest for the CUDA tests
PACKAGES=(spikingjelly==2.0.0 loguru fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv
  uvicorn h11 click anyio idna sniffio typing-extensions typing-inspection annotated-types opentelemetry-api
  importlib-metadata zipp orjson prometheus-client "pylsl>=1.18,<2" pyxdf pynwb hdmf h5py pandas python-dateutil
  six pytz tzdata jsonschema jsonschema-specifications referencing rpds-py attrs ruamel.yaml ruamel.yaml.clib httpx
  httpcore certifi websockets platformdirs pytest pluggy iniconfig packaging)

if [[ "${1:-}" == "--download" ]]; then
  mkdir -p "$WHEELS"
  # --no-deps with the list above: the GPU machine's own torch and numpy stay; manylinux wheels (pylsl's bundles
  # liblsl; its py3-none-any wheel does not)
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_35_x86_64 --platform any -d "$WHEELS" "${PACKAGES[@]}"
  echo "wheels in $WHEELS: $(find "$WHEELS" -name '*.whl' | wc -l)"
  exit 0
fi

mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "== $* ($(date +%T))" | tee -a "$OUT/steps.txt"; }

if [[ -z "${SKIP_INSTALL:-}" ]]; then
  log "installing $(find "$WHEELS" -name '*.whl' | wc -l) wheels from $WHEELS"
  "$PY" -m pip install --no-index --no-deps --quiet "$WHEELS"/*.whl > "$OUT/install.txt" 2>&1
fi
{ command -v nvidia-smi > /dev/null && nvidia-smi; "$PY" -c "import torch; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"; } \
  > "$OUT/device.txt" 2>&1 || true
cat "$OUT/device.txt"

if [[ -n "${QUICK:-}" ]]; then
  MODEL=test-alignnet BATCH=8 BIG=16 STEPS=2 DAYS=3 TRIALS=24 COMPILE=off COMPILE_FAST=off
else
  MODEL=alignnet-paper BATCH=256 BIG=1024 STEPS=30 DAYS=4 TRIALS=120 COMPILE=both COMPILE_FAST=reduce-overhead
fi

log "CUDA tests (they skip with a reason where there is no GPU)"
"$PY" -m pytest -q -rs tests/test_gpu_path.py "tests/test_training.py::test_evaluate_runs_on_cuda" \
  --deselect tests/test_gpu_path.py::test_device_check_script_runs_end_to_end_as_a_dry_run -p no:cacheprovider > "$OUT/pytest.txt" 2>&1 || { tail -30 "$OUT/pytest.txt"; exit 1; }
tail -3 "$OUT/pytest.txt"

log "training throughput: $MODEL, batch $BATCH, eager/compiled x fp32/bf16"
"$PY" -m alignnet bench train --model "$MODEL" --batch "$BATCH" --steps "$STEPS" --device "$DEVICE" \
  --compile "$COMPILE" --precision fp32,bf16 --json "$OUT/train.json" 2>&1 | tee "$OUT/train.txt"
log "training throughput: $MODEL, bf16, CUDA graphs (compile mode reduce-overhead), batch $BATCH and $BIG"
for b in "$BATCH" "$BIG"; do
  "$PY" -m alignnet bench train --model "$MODEL" --batch "$b" --steps "$STEPS" --device "$DEVICE" \
    --compile "$COMPILE_FAST" --precision bf16 --json "$OUT/train-graphs-$b.json" 2>&1 | tee -a "$OUT/train.txt"
done

log "a small evaluation on $DEVICE: $DAYS simulated days x $TRIALS trials, Table 1 and its figures"
"$PY" -m alignnet data simulate --days "$DAYS" --trials "$TRIALS" --out "$OUT/data" --overwrite \
  > "$OUT/simulate.txt" 2>&1 || { tail -30 "$OUT/simulate.txt"; exit 1; }
"$PY" -m alignnet evaluate --data "$OUT/data" --config configs/quick.yaml --protocol single-day \
  --models wiener,alignnet-causal --out "$OUT/evaluate" --set train.device="$DEVICE" \
  ${QUICK:+--set train.max_steps_per_epoch=2 --set pretrain.max_steps_per_epoch=2} \
  > "$OUT/evaluate.txt" 2>&1 || { tail -30 "$OUT/evaluate.txt"; exit 1; }
tail -15 "$OUT/evaluate/results.md" 2>/dev/null || tail -15 "$OUT/evaluate.txt"
log "done: figures and logs in $OUT"
