#!/usr/bin/env bash
# Rebuild the default models kept in service/default_models/ (served by `alignnet serve` with no arguments and
# used by `alignnet demo`): the embedded simulated dataset, causal AlignNet with configs/quick.yaml (~5 min on 2 CPU cores)
# and the Wiener filter with the same windows, each exported to ONNX (parity-checked). Training is seeded; weights
# can still differ in the last bits between machines and torch builds.
set -euo pipefail
cd "$(dirname "$0")/.."
A=${ALIGNNET:-.venv/bin/alignnet}
[ -d data/sim-default ] || "$A" data simulate --out data/sim-default
# configs/quick.yaml is the served default: causal AlignNet, learning rate 0.01 (the winner of `alignnet search` for
# alignnet-causal, docs/results.md "A fair contest")
"$A" train quick --data data/sim-default --out runs/quick
# 20 bins of history: the Wiener filter's winner of the same search
"$A" train quick --data data/sim-default --out runs/wiener-quick --set model=wiener --set model_config.n_lags=20
for pair in alignnet-quick:runs/quick wiener-quick:runs/wiener-quick; do
  name=${pair%%:*}; run=${pair#*:}
  "$A" export "$run/artifact" --formats onnx
  dest=service/default_models/$name
  tmp=$(mktemp -d service/default_models/.tmp-XXXX)
  cp "$run"/artifact/{config.json,model.safetensors,decode.onnx,simulate.onnx} "$tmp"/
  if [ -f "$run/artifact/embed.onnx" ]; then cp "$run/artifact/embed.onnx" "$tmp"/; fi  # the drift monitor's graph
  rm -rf "$dest.old"; [ -d "$dest" ] && mv "$dest" "$dest.old"
  mv "$tmp" "$dest" && rm -rf "$dest.old"
  echo "wrote $dest"
done
