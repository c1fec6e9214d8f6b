"""`ditscale promote`: register a sweep's best checkpoint as an MLflow model version, alias 'champion'."""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

from pipelines.infra.tracking import CHAMPION_ALIAS, DEFAULT_MODEL_NAME
from pipelines.infra.tracking import add_sweep_source_arguments


class PromoteError(ValueError):
    """No promotable point, or the registry refused the checkpoint source."""


def _value(p: dict, key: str) -> float | None:
    """p[key] as a finite float, else None."""
    try:
        v = float(p.get(key))
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def select_best(points: list[dict], metric: str = "fid") -> dict:
    """Point with the lowest `metric` that has a checkpoint; ties -> less compute, then smaller model."""
    cands = [p for p in points if _value(p, metric) is not None and p.get("checkpoint")]
    if not cands:
        raise PromoteError(f"no point has both a finite {metric!r} and a 'checkpoint' ({len(points)} points)")

    def key(p: dict) -> tuple:
        flops = _value(p, "flops") if _value(p, "flops") is not None else _value(p, "budget_flops")
        return (_value(p, metric), flops if flops is not None else math.inf, _value(p, "params") or math.inf)

    return min(cands, key=key)


def _source_of(checkpoint: str) -> str:
    """Registry source of a checkpoint: s3:// and other URIs unchanged, local paths absolute (must exist)."""
    if "://" in checkpoint and not checkpoint.startswith("file://"):
        return checkpoint
    path = checkpoint[len("file://"):] if checkpoint.startswith("file://") else checkpoint
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise PromoteError(f"checkpoint directory {path!r} of the best point does not exist")
    return path


def promote(client, points: list[dict], *, model_name: str = DEFAULT_MODEL_NAME, metric: str = "fid",
            alias: str = CHAMPION_ALIAS, extra_tags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Register the best point's checkpoint (reusing an existing version of the same checkpoint) and set the alias."""
    from mlflow.exceptions import MlflowException

    best = select_best(points, metric)
    source = _source_of(str(best["checkpoint"]))
    flops = best.get("flops", best.get("budget_flops"))
    tags = {"checkpoint": source, metric: best[metric], "train_flops": flops, "model": best.get("model"),
            "params": best.get("params"), "budget_flops": best.get("budget_flops"), "step": best.get("step"),
            "val_loss": best.get("val_loss"), **(extra_tags or {})}
    tags = {k: str(v) for k, v in tags.items() if v is not None}
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="ditscale DiT checkpoints (safetensors directories)")
    existing = [mv for mv in client.search_model_versions(f"name='{model_name}'")
                if (mv.tags or {}).get("checkpoint") == source]
    if existing:
        mv = max(existing, key=lambda v: int(v.version))
        created = False
    else:
        try:
            mv = client.create_model_version(model_name, source=source, run_id=best.get("run_id"), tags=tags,
                                             description=f"best {metric} of the sweep: {best[metric]}")
        except MlflowException as e:
            raise PromoteError(
                f"registry refused checkpoint source {source!r}: {e.message}. A tracking server only accepts "
                f"sources in shared storage (e.g. s3://) or inside the run's artifact directory; write "
                f"checkpoints to s3:// when tracking with a server."
            ) from e
        created = True
    client.set_registered_model_alias(model_name, alias, mv.version)
    return {"model_name": model_name, "version": str(mv.version), "alias": alias, "created": created,
            "checkpoint": source, "run_id": best.get("run_id"), metric: best[metric], "train_flops": flops,
            "model": best.get("model"), "point": best}


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale promote`."""
    p = argparse.ArgumentParser(prog="ditscale promote", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_sweep_source_arguments(p)
    p.add_argument("--metric", default="fid", help="point metric to minimise")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="registered model name")
    p.add_argument("--alias", default=CHAMPION_ALIAS, help="alias to point at the new version")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ditscale promote`."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = build_parser().parse_args(argv)
    from pipelines.infra.tracking import ExperimentRecordError, TrackingURIError, get_client, sweep_points

    try:
        client = get_client(args.tracking_uri)
        parent, points = sweep_points(client, experiment=args.experiment, parent_run_id=args.parent_run)
        exp_name = args.experiment or client.get_experiment(parent.info.experiment_id).name
        res = promote(client, points, model_name=args.model_name, metric=args.metric, alias=args.alias,
                      extra_tags={"experiment": exp_name, "parent_run_id": parent.info.run_id})
    except (PromoteError, ExperimentRecordError, TrackingURIError) as e:
        print(f"ditscale promote: error: {e}", file=sys.stderr)
        return 2
    verb = "registered" if res["created"] else "reused"
    print(f"{verb} {res['model_name']} version {res['version']} -> alias '{res['alias']}': model {res['model']}, "
          f"{args.metric}={res[args.metric]}, train FLOPs {res['train_flops']}, checkpoint {res['checkpoint']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
