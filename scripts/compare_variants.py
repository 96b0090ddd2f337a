"""Compare AlignNet variants on VALIDATION windows only (single-day split of one day; test trials untouched).

This is how the quick config's AlignNet hyper-parameters were chosen (docs/results.md). Example:

    python scripts/compare_variants.py --data data/sim-default \
        --variant "paper-plain:channel_mixing=False,widths=[4,8,16],latent_channels=4" \
        --variant "mixing-small:widths=[4,8,16],latent_channels=4" --variant "default:"
"""

from __future__ import annotations

import argparse
import time

import torch
import yaml

from alignnet.model import create_model
from alignnet.model.metrics import r2
from alignnet.recordings.dataset import Dataset
from alignnet.training.trainer import TrainConfig, Trainer
from alignnet.training.windows import fit_contract, split_trials, windows_in_trials


def parse_variant(text: str) -> tuple[str, dict]:
    label, _, spec = text.partition(":")
    over = {}
    for item in filter(None, _split(spec)):
        k, v = item.split("=", 1)
        over[k.strip()] = yaml.safe_load(v)
    return label, over


def _split(spec: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in spec:
        depth += ch in "[("
        depth -= ch in "])"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/sim-default")
    p.add_argument("--day", type=int, default=0)
    p.add_argument("--variant", action="append", required=True, help="LABEL:key=value,key=value")
    p.add_argument("--pretrain-epochs", type=int, default=0)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps", type=int, default=30, help="max steps per epoch")
    a = p.parse_args()
    torch.set_num_threads(2)
    ds = Dataset(a.data)
    day = ds.day(a.day)
    sp = split_trials(day)
    w = ds.contract().window_bins
    tr = [windows_in_trials(day, sp["train"], w, max(1, w // 5), "pos")]
    va = [windows_in_trials(day, sp["val"], w, max(1, w // 5), "pos")]
    vt = windows_in_trials(day, sp["val"], w, w, "pos")
    contract = fit_contract(ds.contract(), tr)
    for text in a.variant:
        label, over = parse_variant(text)
        torch.manual_seed(0)
        m = create_model("alignnet", **over)
        t = time.time()
        cfg = dict(batch_size=32, lr=3e-3, max_steps_per_epoch=a.steps, progress=False)
        if a.pretrain_epochs:
            Trainer(m, TrainConfig(stage="pretrain", epochs=a.pretrain_epochs, **cfg)).fit(tr, va, contract)
        Trainer(m, TrainConfig(stage="both", epochs=a.epochs, **cfg)).fit(tr, va, contract)
        m.eval()
        with torch.no_grad():
            pred = m.decode(torch.from_numpy(contract.preprocess_spikes(vt.counts))).numpy()
        print(f"{label:<16} validation S→B R² {r2(contract.preprocess_behavior(vt.behavior), pred, 1):.3f}  "
              f"({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
