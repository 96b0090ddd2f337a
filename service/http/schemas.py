"""The JSON request bodies of the service (pydantic models; strict: no silent coercion, no unknown fields)."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

Number = float | int
# Lists that stop at their first bad element: without it a 32-MB body of 8 million numbers where rows are expected
# built 8 million error objects (minutes and gigabytes) before answering 422; with it, under a second.
Row = Annotated[list[Number], Field(fail_fast=True)]
Matrix = Annotated[list[Row], Field(fail_fast=True)]
Batch = Annotated[list[Matrix], Field(fail_fast=True)]


def _whole(value: Any) -> Any:
    """JSON may write an integer as 3.0 (JSON Schema counts it as one); strict validation then sees an int."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class DecodeRequest(BaseModel):
    """One window (C x T) or a batch (B x C x T) of spike counts per bin."""

    model_config = ConfigDict(strict=True, extra="forbid")
    spikes: Union[Matrix, Batch] = Field(..., description="counts per bin, channels x bins")  # noqa: UP007


class SimulateRequest(BaseModel):
    """One window (D x T) or a batch (B x D x T) of behavior."""

    model_config = ConfigDict(strict=True, extra="forbid")
    behavior: Union[Matrix, Batch] = Field(..., description="behavior, dims x bins")  # noqa: UP007
    sample: bool = Field(False, description="also draw Poisson spike counts from the simulated rates")
    seed: Annotated[int, Field(ge=0, le=2**63 - 1), BeforeValidator(_whole)] | None = Field(
        None, description="seed of the sampling")


class CalibrateRequest(BaseModel):
    """A block of a new day's binned spikes (and, for few-shot, its behavior) to fit that day's read-in on."""

    model_config = ConfigDict(strict=True, extra="forbid")
    day: str = Field(..., description="name of the new day (letters, digits, '-', '_')")
    spikes: Matrix = Field(..., description="counts per bin, channels x bins (contiguous bins)")
    behavior: Matrix | None = Field(None, description="dims x bins of the same bins; omit: zero-label")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    artifact: str | None = Field(None, min_length=1, max_length=1024, pattern=r"^[^\x00]+$",
                                 description="artifact folder to load, relative to the service's artifact root "
                                 "(default: the current one)")
