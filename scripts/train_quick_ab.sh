#!/usr/bin/env bash
# The quick config's training, end to end, on two checkouts: is one slower on the CPU? One epoch per stage on the
# default dataset, the two trees alternating, ROUNDS rounds (default 2). From the repository root:
#
#   git worktree add /tmp/base <commit before>
#   bash scripts/train_quick_ab.sh /tmp/base
#
# Each run starts in its own tree: `python -m` puts the working folder first on the path, ahead of PYTHONPATH and
# the editable install, so each imports its own package (the line says which). Prints, per run, the command's wall
# time and the two stages' epoch times from the artifact; runs go to /tmp/qab-<tree>-<round>.
set -euo pipefail

BASE=$(cd "$1" && pwd)
HERE=$(pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
for r in $(seq "${ROUNDS:-2}"); do
  for t in "$BASE" "$HERE"; do
    name=$(basename "$t")-$r
    rm -rf "/tmp/qab-$name"
    s=$(date +%s.%N)
    (cd "$t" && "$PY" -m alignnet train quick --data "$HERE/data/sim-default" --out "/tmp/qab-$name" \
      --set pretrain.epochs=1 --set finetune.epochs=1 > "/tmp/qab-$name.log" 2>&1)
    e=$(date +%s.%N)
    package=$(cd "$t" && "$PY" -c "import alignnet; print(alignnet.__file__)")
    "$PY" - "$name" "$(awk "BEGIN {print $e - $s}")" "$package" "/tmp/qab-$name/artifact/config.json" <<'EOF'
import json, sys

name, wall, package, path = sys.argv[1:]
p = json.load(open(path))["provenance"]
print(f"{name}: {float(wall):.1f} s whole command ({package}); epochs: pretrain {p['stages']['pretrain']['train_s']:.1f} s"
      f", fine-tune {p['stages']['finetune']['train_s']:.1f} s")
EOF
  done
done
