#!/usr/bin/env bash
# Paper scale in one command, for a GPU machine: simulate the paper's 22 days (32,098 trials; days simulated in
# parallel, as many at once as cores and memory allow), pretrain and fine-tune alignnet-paper (configs/paper.yaml),
# then Table 1 (`alignnet evaluate --protocol all`, configs/paper.yaml's evaluate section) with its figures. Each
# stage's wall time goes to $OUT/timings.json and $OUT/timings.png. From the repository root:
#
#   bash scripts/paper_scale.sh                  # DEVICE=cuda
#
# Settings (environment): OUT (default runs/paper-scale), DEVICE (default cuda), PYTHON (default python3), WORKERS
# (days simulated at once; default 0 = auto), MODELS (Table 1's models; default: evaluate's own list), TRAIN_SET and
# EVAL_SET (extra `--set KEY=VALUE` words for `alignnet train` and `alignnet evaluate`, e.g.
# TRAIN_SET="--set pretrain.batch_size=1024"), QUICK=1 (3 days of 20 trials, two steps an epoch, a small model: a
# dry run of the whole script on any machine in a minute or two). An existing $OUT/data is used as it is.
set -euo pipefail

OUT=${OUT:-runs/paper-scale}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-0}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "== $* ($(date +%T))" | tee -a "$OUT/steps.txt"; }
declare -A SECONDS_OF

# word lists for the three stages (QUICK shrinks each; TRAIN_SET / EVAL_SET add the caller's overrides)
SIM=(--paper-scale --workers "$WORKERS")
TRAIN=(--device "$DEVICE")
EVAL=(--protocol all --set train.device="$DEVICE")
if [[ -n "${QUICK:-}" ]]; then
  SIM=(--days 3 --trials 20 --workers "$WORKERS")
  for s in pretrain finetune; do
    TRAIN+=(--set "$s.epochs=1" --set "$s.max_steps_per_epoch=2" --set "$s.batch_size=16")
  done
  TRAIN+=(--set model=test-alignnet --set train.cross_segments=true)
  EVAL+=(--set train.epochs=1 --set train.max_steps_per_epoch=2 --set train.batch_size=16 --set pretrain.epochs=1
         --set readin.epochs=1 --set models.alignnet.widths=[4,8])
  MODELS=${MODELS:-wiener,alignnet}
fi
read -r -a EXTRA_TRAIN <<< "${TRAIN_SET:-}"
read -r -a EXTRA_EVAL <<< "${EVAL_SET:-}"
[[ -n "${MODELS:-}" ]] && EVAL+=(--models "$MODELS")

stage() {  # stage NAME LOG COMMAND...: run it, time it, keep its log; on failure show the log's tail and stop
  local name=$1 logf=$2 t0
  shift 2
  log "$name"
  t0=$(date +%s.%N)
  "$@" > "$logf" 2>&1 || { tail -30 "$logf"; log "$name failed (log: $logf)"; exit 1; }
  SECONDS_OF[$name]=$(awk "BEGIN {print $(date +%s.%N) - $t0}")
  log "$name: ${SECONDS_OF[$name]%.*} s"
}

if [[ -f "$OUT/data/manifest.json" ]]; then
  log "simulate: using the dataset already in $OUT/data"
  SECONDS_OF[simulate]=0
else
  stage simulate "$OUT/simulate.txt" "$PY" -m alignnet data simulate "${SIM[@]}" --out "$OUT/data"
fi
stage train "$OUT/train.txt" "$PY" -m alignnet train paper --data "$OUT/data" --out "$OUT/train" \
  "${TRAIN[@]}" "${EXTRA_TRAIN[@]}"
stage evaluate "$OUT/evaluate.txt" "$PY" -m alignnet evaluate --config paper --data "$OUT/data" \
  --out "$OUT/evaluate" "${EVAL[@]}" "${EXTRA_EVAL[@]}"

"$PY" - "$OUT" "$DEVICE" "${SECONDS_OF[simulate]}" "${SECONDS_OF[train]}" "${SECONDS_OF[evaluate]}" <<'EOF'
import json, os, sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

out, device, *secs = sys.argv[1:]
stages = dict(zip(("simulate", "train", "evaluate"), map(float, secs)))
card = device
if device.startswith("cuda"):
    import torch
    card = torch.cuda.get_device_name(0)
prov = json.loads((Path(out) / "train" / "artifact" / "config.json").read_text())["provenance"]
result = {"device": card, "seconds": stages, "total_s": sum(stages.values()),
          "train_stages": {k: {"epochs": v.get("epochs"), "train_s": v.get("train_s"),
                               "windows_per_s": v.get("windows_per_s")} for k, v in prov.get("stages", {}).items()}}
(Path(out) / "timings.json").write_text(json.dumps(result, indent=2) + "\n")
fig, ax = plt.subplots(figsize=(6, 2.2))
left = 0.0
for name, s in stages.items():
    ax.barh(0, s / 60, left=left / 60, label=f"{name} {s / 60:.1f} min")
    left += s
if not os.environ.get("QUICK"):
    ax.axvline(20, color="k", ls="--", lw=1, label="goal: 20 min on one H200")
ax.set_yticks([])
ax.set_xlabel("minutes")
ax.set_title(f"paper scale on {card}: {left / 60:.1f} min")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, frameon=False)
fig.savefig(Path(out) / "timings.png", dpi=120, bbox_inches="tight")
print(json.dumps(result, indent=2))
EOF
log "done: $OUT/timings.json, Table 1 in $OUT/evaluate/results.md"
