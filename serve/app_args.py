"""The sampler application's arguments (`args:` of serve/config.yaml) as a typed pydantic model.

Ray Serve validates an application's `args` mapping into this model before calling the builder
(`serve.app:build_app(args: AppArgs)`), so `serve run serve/config.yaml`, `serve run serve.app:build_app
champion=true` and `ditscale serve` all get the same checks and coercions, and a bad key is named.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class AppArgs(BaseModel):
    """Which checkpoint to serve and how to load it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    checkpoint: str | None = Field(None, description="checkpoint directory: local path or s3:// URI")
    champion: bool = Field(False, description="serve the MLflow registered model version with alias `alias`")
    model_name: str = Field("ditscale", description="registered model name used with champion")
    alias: str = Field(
        "champion", min_length=1, description="registered model alias used with champion (`ditscale promote --alias`)"
    )
    tracking_uri: str | None = Field(None, description="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI)")
    device: str | None = Field(None, description="cuda / cpu; default: cuda when the replica has a GPU")
    use_ema: bool = Field(True, description="serve the EMA weights")
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="model compute: bf16 autocast (+ TF32) on a GPU for auto, fp32 on a CPU"
    )
    compile: bool = Field(False, description="torch.compile the model once per replica (slower start)")

    @model_validator(mode="after")
    def _one_source(self) -> "AppArgs":
        if bool(self.checkpoint) == bool(self.champion):
            raise ValueError("args: give exactly one of 'checkpoint' (path or s3:// URI) or 'champion: true'")
        return self
