#!/usr/bin/env bash
# The README's worked example on the shared real recordings (monkey C), from import to an online score.
set -eux
A=.venv/bin/alignnet
R=${ALIGNNET_REAL_DATA:-../shared/data/real}
$A data import $R/chewie/chewie-2013-10-03-bin100ms-moving.npz $R/chewie/chewie-2013-12-19-bin100ms-moving.npz \
    --out runs/worked/chewie --behavior vel --overwrite
$A data info runs/worked/chewie
$A train --data runs/worked/chewie --out runs/worked/run
$A export runs/worked/run/artifact --formats onnx
$A replay runs/worked/chewie --day 1 --held-out --serve runs/worked/run/artifact --score --speed 10 \
    --json runs/worked/replay.json
