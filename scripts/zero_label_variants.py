"""Zero-label calibration methods compared on simulated days (docs/results.md, "A new recording day").

Each method fits a new day's read-in of the default model on the day's first 60 s without behavior, starting from
the per-channel statistics map (``stats``: the method kept), and is scored on the rest of the day:

    .venv/bin/python scripts/zero_label_variants.py 12,7 stats,rec,mom,beh     # ~3 min a gradient method and day
    # another model and dataset (the choice re-made on simulated population 1, docs/results.md):
    .venv/bin/python scripts/zero_label_variants.py 12,7 stats,rec,mom,beh runs/quick-s1/artifact data/sim-13-s1

Methods (``+`` combines them): ``stats`` (no gradient steps), ``rec`` (spike reconstruction through the frozen
autoencoder), ``mom`` (diagonal Gaussian KL + CORAL of the AlignNet latent against the training days', as NoMAD
aligns latent distributions), ``beh`` (moments of the decoded behavior against the training behavior's), ``anc``
(an L2 pull back to the start). 150 Adam steps of 32 windows each, read-in only.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from alignnet.model.artifacts import load_artifact, model_contract
from alignnet.recordings.dataset import Dataset
from alignnet.training.calibrate import _rest_r2, calibration_trials, day_name, match_channels, rest_windows
from alignnet.training.windows import short_segments, windows_in_trials


def gauss_loss(z: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    var, rv = z.var(0) + 1e-4, torch.diagonal(cov) + 1e-4
    kl = 0.5 * (torch.log(rv / var) + (var + (z.mean(0) - mean) ** 2) / rv - 1).mean()
    return kl + ((torch.cov(z.T) - cov) / torch.sqrt(torch.outer(rv, rv))).pow(2).mean()


def main(days: list[int], methods: list[str], artifact: str = "service/default_models/alignnet-quick",
         data: str = "data/sim-13", steps: int = 150) -> None:
    torch.set_num_threads(1)
    model, _, config = load_artifact(Path(artifact))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    mc = model_contract(config)
    ref = {k: torch.tensor(config["latent_reference"][k], dtype=torch.float32) for k in ("mean", "cov")}
    ds = Dataset(Path(data))
    w_bins = mc.window_bins
    for di in days:
        d = ds.day(di)
        calib = calibration_trials(d, seconds=60)
        w = windows_in_trials(d, calib, w_bins, max(1, w_bins // 10), mc.behavior_kind)
        x = torch.from_numpy(mc.preprocess_spikes(w.counts))
        name = day_name(d.name)
        ad = model.add_day(name, d.n_channels)
        rest = rest_windows(d, calib, w_bins, mc.behavior_kind, short_segments(d, w_bins))
        res = {"none": _rest_r2(model, rest, mc, None)}
        for method in methods:
            with torch.no_grad():
                ad.read_out.weight.copy_(torch.eye(d.n_channels)[:, :, None])
                ad.read_out.bias.zero_()
            match_channels(ad, config["channel_reference"], x.numpy())
            start = [p.detach().clone() for p in ad.read_in.parameters()]
            for p in ad.read_in.parameters():
                p.requires_grad_(True)
            opt = torch.optim.Adam(ad.read_in.parameters(), lr=3e-3)
            g = torch.Generator().manual_seed(0)
            for _ in range(0 if method == "stats" else steps):
                xb = x[torch.randint(0, len(x), (32,), generator=g)]
                lat, skips = model.encode_spikes(ad.read_in(xb))
                loss = torch.zeros(())
                if "rec" in method:
                    loss = loss + F.mse_loss(F.softplus(model.decode_spike_logits(lat, skips)), xb)
                if "mom" in method:
                    loss = loss + gauss_loss(model.spike_projection(lat), ref["mean"], ref["cov"])
                if "beh" in method:
                    b = model.decode_behavior(lat, skips)
                    flat = b.permute(0, 2, 1).reshape(-1, b.shape[1])
                    loss = loss + gauss_loss(flat, torch.zeros(b.shape[1]), torch.eye(b.shape[1]))
                if "anc" in method:
                    loss = loss + sum(((p - q) ** 2).sum() for p, q in zip(ad.read_in.parameters(), start))
                opt.zero_grad()
                loss.backward()
                opt.step()
            for p in ad.read_in.parameters():
                p.requires_grad_(False)
            res[method] = _rest_r2(model, rest, mc, name)
            print(d.name, method, round(res[method], 3), flush=True)
        print(d.name, {k: round(v, 3) for k, v in res.items()}, flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1].split(",")], sys.argv[2].split(","), *sys.argv[3:5])
