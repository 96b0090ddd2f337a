"""Service settings from the environment (prefix ``ALIGNNET_``), e.g. ``ALIGNNET_ARTIFACT=runs/quick/artifact``;
``alignnet serve`` flags override them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# The default model: AlignNet trained with configs/quick.yaml on the embedded simulated dataset, exported; kept in
# the repository (1.9 MB) so `alignnet serve` answers at once. Rebuilt by scripts/build_default_models.sh.
DEFAULT_MODELS = Path(__file__).resolve().parent.parent / "default_models"
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
    calibration_keep: int = Field(5, ge=1, le=1000, description="calibrated artifacts kept per base artifact (the "
                                  "oldest beyond this are removed; never the one served)")
    calibration_max_seconds: float = Field(600.0, gt=0, description="most data one POST /calibrate may hold, in "
                                           "seconds of bins (413 beyond; calibration_memory_mb bounds it too)")
    calibration_memory_mb: float = Field(3072.0, ge=2048.0, description="memory one calibration may take, its fixed "
                                         "~1.8 GB (fit and export) included; bounds its block to (this - 1,800 MB) / "
                                         "2.4 KB numbers (413 beyond; docs/benchmarks.md, 'Calibration memory')")
    # the engine pool and request bounds
    workers: int = Field(1, ge=1, le=64, description="engine worker threads (requests decoded at once; on 2 cores "
                         "one gave 200 req/s and p99 0.41 s under 64 clients, two 122 req/s and 2.3 s: "
                         "scripts/hardening_bench.py --engine-choices)")
    http_batch_wait_s: float = Field(0.0, ge=0, le=0.05, description="> 0: the windows of concurrent /decode "
                                     "requests that arrive within this wait are decoded in one engine call (needs "
                                     "workers >= 2 to have requests to batch). Off by default: on 2 CPU cores a "
                                     "batch cost more per window than one at a time (docs/benchmarks.md)")
    queue: int = Field(64, ge=0, le=10_000, description="requests waiting for a worker beyond which 503 is answered "
                       "(each holds its body: at most (workers + queue) x max_body_bytes in memory)")
    blas_threads: int = Field(1, ge=1, le=64, description="numpy's BLAS threads in the service (the incremental "
                              "decoder's matrix products are small: a second OpenBLAS thread only spins between "
                              "them, most of a core on 2 cores; see docs/benchmarks.md)")
    engine_chunk: int = Field(16, ge=1, le=4096, description="most windows the network runs at once (bounds memory)")
    request_memory_mb: float = Field(256.0, gt=0, description="memory one request may need; bounds the windows per "
                                     "request below max_batch for large contracts")
    body_timeout_s: float = Field(30.0, gt=0, description="the whole request body must arrive within this (408)")
    # who may ask what
    allowed_hosts: str = Field("localhost,127.0.0.1,::1", description="comma-separated Host names answered (* any)")
    cors_origins: str = Field("", description="comma-separated web origins allowed to call the service from a "
                              "browser (CORS); other origins get 403")
    admin_token: SecretStr | None = Field(None, description="bearer token for /reload and /calibrate; unset: those "
                                          "answer clients on this machine only")
    artifact_root: Path | None = Field(None, description="/reload loads only folders under this (default: the "
                                       "folder holding the artifact served at start)")
    artifact_key: SecretStr | None = Field(None, description="serve only artifacts signed with this key "
                                           "(HMAC-SHA256; sign with ALIGNNET_ARTIFACT_KEY set, or `alignnet seal`)")
    # LSL bridge (off unless asked for)
    lsl_decode: bool = Field(False, description="decode a spike stream from LSL and push the trajectory")
    lsl_simulate: bool = Field(False, description="simulate spikes from a behavior stream on LSL")
    lsl_source_name: str | None = Field(None, description="name of the spike source stream (decode direction)")
    lsl_sources: list[str] = Field(default_factory=list, description="several spike sources by name, each decoded "
                                   "to its own '<source>-decoded' outlet, their hops batched (JSON list in the "
                                   "environment)")
    lsl_batch_wait_s: float = Field(0.001, ge=0, le=0.02, description="with several sources: how long a bin waits "
                                    "for the other sources' bins to be decoded with it in one batch (incremental "
                                    "decoding: until every source has one, at most this long; windows: this long)")
    lsl_batch_workers: int = Field(2, ge=1, le=64, description="with several sources: decoding threads (one engine "
                                   "thread each; what waits is split among them)")
    lsl_incremental: bool = Field(True, description="decode each bin from cached columns where the artifact can "
                                  "(decode_stream.npz: the numbers of the ring's newest bin, less work); off: run "
                                  "the window every hop")
    lsl_source_type: str = Field("Spikes", description="type of the spike source stream")
    lsl_behavior_name: str | None = Field(None, description="name of the behavior source stream (simulate)")
    lsl_behavior_type: str = Field("Behavior", description="type of the behavior source stream")
    lsl_output_name: str | None = Field(None, description="decoded stream name (default '<source>-decoded')")
    lsl_hop_bins: int = Field(1, ge=1, description="bins between two decodes")
    lsl_max_lag_bins: int = Field(10, ge=1, description="beyond this backlog only the newest hop is decoded")
    lsl_resolve_timeout_s: float = Field(5.0, gt=0, description="timeout of one resolve attempt")
    lsl_stall_s: float = Field(1.0, gt=0, description="a source silent this long is reported stalled, and another of "
                               "the same name is taken if one appears")
    lsl_rate_tolerance: float = Field(0.1, gt=0, le=10, description="a regular source whose time stamps run more "
                                      "than this share off its declared rate (measured every 2 s) is refused until "
                                      "it runs right: its samples are dropped, /health and alignnet_lsl_rate_mismatch "
                                      "say so")
    lsl_sample: bool = Field(False, description="simulate direction: push sampled counts instead of rates")
    lsl_calibrate_seconds: float = Field(0.0, ge=0, description="decode direction: calibrate the session's read-in "
                                         "without labels on its first S seconds (0: off), decoding meanwhile")

    @property
    def allowed_host_list(self) -> list[str]:
        return [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]
