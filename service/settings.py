"""Service settings from the environment (prefix ``ALIGNNET_``), e.g. ``ALIGNNET_ARTIFACT=runs/quick/artifact``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALIGNNET_")

    artifact: Path = Field(Path("runs/quick/artifact"), description="exported artifact folder to serve")
    engine: str = Field("onnx", pattern="^(onnx|torchscript|eager)$", description="runtime engine")
    threads: int = Field(1, ge=1, le=64, description="threads of the engine")
    max_batch: int = Field(256, ge=1, description="most windows in one request")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body accepted")
