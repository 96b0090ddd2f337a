"""Losses. Each returns (loss, parts) where parts are detached 0-d tensors for logging: turned into numbers only
after the optimiser step (``Trainer.step``), so a compiled step has no graph break and a GPU step no sync."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, exclude: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Symmetric InfoNCE (CLIP): window i's two views are positives, every other window of the batch a negative,
    except the pairs ``exclude`` marks (B, B) bool, e.g. windows that overlap in time: they share bins, so calling
    them negatives would push apart views of the same data. The diagonal is never excluded.

    z_a, z_b: (B, D). Parts: 'align' (mean positive similarity / temperature, to maximise), 'uniform' (mean
    log-sum-exp over the batch), 'accuracy' (fraction of windows whose nearest other-modality vector is their own)."""
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"latent vectors must both be (B, D), got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    a, b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    if exclude is not None:
        exclude = exclude & ~torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(exclude, float("-inf"))
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    with torch.no_grad():
        align = logits.diagonal().mean()
        uniform = 0.5 * (torch.logsumexp(logits, 1).mean() + torch.logsumexp(logits, 0).mean())
        acc = 0.5 * ((logits.argmax(1) == target).float().mean() + (logits.argmax(0) == target).float().mean())
    return loss, {"align": align, "uniform": uniform, "accuracy": acc}


def overlapping(starts: torch.Tensor, window: int) -> torch.Tensor:
    """(B,) window start bins of one day -> (B, B) True where two windows share a bin."""
    return (starts[:, None] - starts[None, :]).abs() < window


def pretrain_loss(
    out: dict[str, torch.Tensor], spikes: torch.Tensor, behavior: torch.Tensor, temperature: float,
    contrastive_weight: float = 1.0, spike_weight: float = 1.0, behavior_weight: float = 1.0,
    exclude: torch.Tensor | None = None, cross_modal_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """AlignNet pretraining: reconstruction (MSE) of both modalities plus contrastive alignment (``exclude``: pairs
    that are not negatives, see ``info_nce``), plus ``cross_modal_weight`` x the MSE of the two cross-modal paths
    (spikes -> behavior, behavior -> spikes) where ``out`` has them (``pretrain_outputs(cross_modal=True)``)."""
    spike_mse = F.mse_loss(out["spike_recon"], spikes)
    behavior_mse = F.mse_loss(out["behavior_recon"], behavior)
    nce, parts = info_nce(out["z_spike"], out["z_behavior"], temperature, exclude)
    loss = spike_weight * spike_mse + behavior_weight * behavior_mse + contrastive_weight * nce
    logged = {"spike_mse": spike_mse.detach(), "behavior_mse": behavior_mse.detach(), "infonce": nce.detach()}
    if cross_modal_weight > 0:
        if "behavior_from_spikes" not in out:
            raise ValueError("cross_modal_weight > 0 needs the cross-modal outputs: pretrain_outputs(cross_modal=True)")
        decode_mse = F.mse_loss(out["behavior_from_spikes"], behavior)
        simulate_mse = F.mse_loss(out["spikes_from_behavior"], spikes)
        loss = loss + cross_modal_weight * (decode_mse + simulate_mse)
        logged.update(decode_mse=decode_mse.detach(), simulate_mse=simulate_mse.detach())
    return loss, {"loss": loss.detach(), **logged, **{f"nce_{k}": v for k, v in parts.items()}}
