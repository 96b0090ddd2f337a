"""The JSON request bodies of the service (pydantic models; strict: no silent coercion, no unknown fields)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Number = float | int


class DecodeRequest(BaseModel):
    """One window (C x T) or a batch (B x C x T) of spike counts per bin."""

    model_config = ConfigDict(strict=True, extra="forbid")
    spikes: list[list[Number]] | list[list[list[Number]]] = Field(..., description="counts per bin, channels x bins")


class SimulateRequest(BaseModel):
    """One window (D x T) or a batch (B x D x T) of behavior."""

    model_config = ConfigDict(strict=True, extra="forbid")
    behavior: list[list[Number]] | list[list[list[Number]]] = Field(..., description="behavior, dims x bins")
    sample: bool = Field(False, description="also draw Poisson spike counts from the simulated rates")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="seed of the sampling")


class CalibrateRequest(BaseModel):
    """A block of a new day's binned spikes (and, for few-shot, its behavior) to fit that day's read-in on."""

    model_config = ConfigDict(strict=True, extra="forbid")
    day: str = Field(..., description="name of the new day (letters, digits, '-', '_')")
    spikes: list[list[Number]] = Field(..., description="counts per bin, channels x bins (contiguous bins)")
    behavior: list[list[Number]] | None = Field(None, description="dims x bins of the same bins; omit: zero-label")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    artifact: str | None = Field(None, description="artifact folder to load (default: the current one)")
