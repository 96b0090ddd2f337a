"""Service settings from the environment (prefix ``ALIGNNET_``), e.g. ``ALIGNNET_ARTIFACT=runs/quick/artifact``;
``alignnet serve`` flags override them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The default model: AlignNet trained with configs/quick.yaml on the embedded simulated dataset, exported; kept in
# the repository (1.9 MB) so `alignnet serve` answers at once. Rebuilt by scripts/build_default_models.sh.
DEFAULT_MODELS = Path(__file__).resolve().parent / "default_models"
DEFAULT_ARTIFACT = DEFAULT_MODELS / "alignnet-quick"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALIGNNET_")

    artifact: Path = Field(DEFAULT_ARTIFACT, description="exported artifact folder to serve")
    engine: str = Field("onnx", pattern="^(onnx|torchscript|eager)$", description="runtime engine")
    threads: int = Field(1, ge=1, le=64, description="threads of the engine")
    max_batch: int = Field(256, ge=1, description="most windows in one request")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body accepted")
    calibration_dir: Path | None = Field(None, description="where POST /calibrate writes calibrated artifacts "
                                         "(default: '<artifact>-calibrated' next to the base artifact)")
    resume_calibrated: bool = Field(True, description="serve the last calibrated artifact of the base on start")
    # LSL bridge (off unless asked for)
    lsl_decode: bool = Field(False, description="decode a spike stream from LSL and push the trajectory")
    lsl_simulate: bool = Field(False, description="simulate spikes from a behavior stream on LSL")
    lsl_source_name: str | None = Field(None, description="name of the spike source stream (decode direction)")
    lsl_source_type: str = Field("Spikes", description="type of the spike source stream")
    lsl_behavior_name: str | None = Field(None, description="name of the behavior source stream (simulate)")
    lsl_behavior_type: str = Field("Behavior", description="type of the behavior source stream")
    lsl_output_name: str | None = Field(None, description="decoded stream name (default '<source>-decoded')")
    lsl_hop_bins: int = Field(1, ge=1, description="bins between two decodes")
    lsl_max_lag_bins: int = Field(10, ge=1, description="beyond this backlog only the newest hop is decoded")
    lsl_resolve_timeout_s: float = Field(5.0, gt=0, description="timeout of one resolve attempt")
    lsl_sample: bool = Field(False, description="simulate direction: push sampled counts instead of rates")
    lsl_calibrate_seconds: float = Field(0.0, ge=0, description="decode direction: calibrate the session's read-in "
                                         "without labels on its first S seconds (0: off), decoding meanwhile")
