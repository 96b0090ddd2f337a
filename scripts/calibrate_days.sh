#!/usr/bin/env bash
# Days 6-12 of data/sim-13: zero-label and few-shot calibration of the default model on each day's first 60 s.
# data/sim-13: alignnet data simulate --days 13 --out data/sim-13 (days 0-5 are those the default model trained on)
set -u
A=.venv/bin/alignnet
M=alignnet/service/default_models/alignnet-quick
for d in 6 7 8 9 10 11 12; do
  $A calibrate $M data/sim-13 --day $d --seconds 60 --zero-label --out runs/cal-zero-$d 2>&1 | grep -E "R²|calibration of" 
  $A calibrate $M data/sim-13 --day $d --seconds 60 --out runs/cal-few-$d --set epochs=20 --set patience=5 --set progress=false 2>&1 | grep -E "R²|calibration of"
done
echo DONE
