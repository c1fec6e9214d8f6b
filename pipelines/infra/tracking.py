"""MLflow helpers shared by the train/sweep/evaluate and fit/promote/report jobs.

Tracking URI resolution (explicit argument > MLFLOW_TRACKING_URI > embedded sqlite default), a
fail-fast reachability check for tracking servers, experiment creation with predictable artifact
locations, and readers for the experiment record of DESIGN §3 (parent sweep run, child trial runs,
`points.json` artifacts).
"""
from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Experiment-record vocabulary (DESIGN §3 "Experiment record"); import these instead of retyping them.
ROLE_TAG = "ditscale.role"
ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"
PARENT_TAG = "mlflow.parentRunId"
POINTS_ARTIFACT = "points.json"
DEFAULT_DB_NAME = "mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlruns"


class TrackingURIError(ConnectionError):
    """The MLflow tracking URI is malformed or its server cannot be reached."""


class ExperimentRecordError(LookupError):
    """An experiment, run or artifact the experiment record promises is missing or malformed."""


def default_tracking_uri(cwd: str | os.PathLike | None = None) -> str:
    """`sqlite:///<cwd>/mlflow.db` — the embedded default store (artifacts under <cwd>/mlruns)."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    return f"sqlite:///{(base / DEFAULT_DB_NAME).resolve()}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: `uri` if given, else $MLFLOW_TRACKING_URI, else the embedded sqlite default.

    A bare filesystem path ending in `.db` becomes `sqlite:///<abs path>`; relative sqlite paths
    are made absolute so Ray workers with another cwd write to the same file.
    """
    uri = (uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        return default_tracking_uri()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:" and not os.path.isabs(path):
            return f"sqlite:///{Path(path).resolve()}"
        return uri
    if "://" not in uri and uri.endswith(".db"):
        return f"sqlite:///{Path(uri).expanduser().resolve()}"
    return uri


def is_http_uri(uri: str) -> bool:
    """True for an http(s) tracking-server URI."""
    return urllib.parse.urlparse(uri).scheme in ("http", "https")


def check_tracking_uri(uri: str | None = None, timeout: float = 3.0) -> str:
    """Resolve `uri` and fail fast (TrackingURIError) when it cannot work; return the resolved URI.

    http(s): GET /health, falling back to GET /api/2.0/mlflow/experiments/search (servers behind a
    proxy may not expose /health), each with a short timeout. sqlite: the database's directory must
    exist. Other schemes (databricks, postgresql, ...) are passed through unchecked.
    """
    resolved = resolve_tracking_uri(uri)
    parsed = urllib.parse.urlparse(resolved)
    if parsed.scheme in ("http", "https"):
        if not parsed.netloc:
            raise TrackingURIError(f"MLflow tracking URI {resolved!r} has no host")
        base = resolved.rstrip("/")
        errors = []
        for path in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
            try:
                with urllib.request.urlopen(base + path, timeout=timeout) as resp:  # noqa: S310 (http(s) only)
                    if 200 <= resp.status < 300:
                        return resolved
                    errors.append(f"GET {path}: HTTP {resp.status}")
            except urllib.error.HTTPError as e:
                if e.code in (401, 403):  # reachable, only authentication in the way: MLflow will use its creds
                    return resolved
                errors.append(f"GET {path}: HTTP {e.code}")
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                errors.append(f"GET {path}: {reason}")
                if isinstance(reason, (ConnectionRefusedError, TimeoutError)) or "timed out" in str(reason):
                    break  # nothing listens / nothing answers: the second probe would fail the same way
        raise TrackingURIError(
            f"MLflow tracking server {resolved!r} is unreachable ({'; '.join(errors)}). Start it "
            f"(`mlflow server --host ... --port ...`), fix --tracking-uri / MLFLOW_TRACKING_URI, or omit it "
            f"to use the local sqlite store."
        )
    if parsed.scheme == "sqlite":
        path = resolved[len("sqlite:///"):] if resolved.startswith("sqlite:///") else ""
        if path and path != ":memory:" and not Path(path).parent.is_dir():
            raise TrackingURIError(
                f"MLflow tracking URI {resolved!r}: directory {str(Path(path).parent)!r} does not exist"
            )
    return resolved


def default_artifact_root(tracking_uri: str) -> str | None:
    """Artifact root beside a sqlite database (`<db dir>/mlruns`), None for servers (they choose)."""
    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri[len("sqlite:///"):]
        if path and path != ":memory:":
            return (Path(path).parent / DEFAULT_ARTIFACT_DIR).resolve().as_uri()
    return None


def configure_mlflow(tracking_uri: str | None = None, check: bool = True) -> str:
    """Resolve (and check) the URI, point the mlflow module and registry at it, export it; return it.

    Exporting MLFLOW_TRACKING_URI lets Ray workers and `setup_mlflow` inherit the same store.
    """
    import mlflow

    uri = check_tracking_uri(tracking_uri) if check else resolve_tracking_uri(tracking_uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def get_client(tracking_uri: str | None = None, check: bool = True):
    """An `MlflowClient` on the resolved tracking URI (tracking and registry on the same store)."""
    from mlflow import MlflowClient

    uri = check_tracking_uri(tracking_uri) if check else resolve_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client, name: str, artifact_location: str | None = None, tags: dict | None = None) -> str:
    """Experiment id of `name`, creating it if missing.

    For a sqlite store the artifacts go to `<db dir>/mlruns/<name>` (not the process cwd, which
    MLflow would otherwise use); a tracking server keeps its own artifact root. Restores a deleted
    experiment of the same name instead of failing.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    if artifact_location is None:
        root = default_artifact_root(client.tracking_uri)
        if root is not None:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            artifact_location = f"{root}/{safe}"
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags=tags)
    except Exception:  # a concurrent creator won the race: use theirs
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def get_experiment_id(client, name: str) -> str:
    """Id of an existing experiment; ExperimentRecordError listing the known names otherwise."""
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments(max_results=50))
        raise ExperimentRecordError(f"MLflow experiment {name!r} not found at {client.tracking_uri!r}; known: {names}")
    return exp.experiment_id


def _search_all(client, experiment_ids: list[str], filter_string: str) -> list:
    """All runs matching the filter (follows page tokens), newest first."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_parent_run(client, experiment_name: str):
    """The newest sweep (parent) run of an experiment: tag ditscale.role=sweep, else a run that has children."""
    exp_id = get_experiment_id(client, experiment_name)
    runs = _search_all(client, [exp_id], f"tags.`{ROLE_TAG}` = '{ROLE_SWEEP}'")
    if runs:
        return runs[0]
    # Older/foreign records without the role tag: the newest run referenced as a parent.
    children = _search_all(client, [exp_id], "")
    parent_ids = [r.data.tags.get(PARENT_TAG) for r in children if r.data.tags.get(PARENT_TAG)]
    if parent_ids:
        return client.get_run(parent_ids[0])
    raise ExperimentRecordError(
        f"experiment {experiment_name!r} has no sweep run (tag {ROLE_TAG}={ROLE_SWEEP}) and no child runs"
    )


def child_runs(client, parent_run_id: str, experiment_id: str | None = None) -> list:
    """Trial runs whose tag mlflow.parentRunId is `parent_run_id`, oldest first."""
    if experiment_id is None:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = _search_all(client, [experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def read_json_artifact(client, run_id: str, artifact_path: str) -> Any:
    """One small JSON artifact of a run, parsed; read without MLflow's "Downloading artifacts" progress bar
    (a bar per small file is noise; setting MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR yourself still wins)."""
    quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
    if quiet:
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(client.download_artifacts(run_id, artifact_path, dst_path=tmp)).read_text())
    finally:
        if quiet:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)


def load_points(client, run_id: str, artifact_path: str = POINTS_ARTIFACT) -> list[dict[str, Any]]:
    """The `points.json` list of one trial run ([] when the run has not logged it yet)."""
    names = {a.path for a in client.list_artifacts(run_id)}
    if artifact_path not in names:
        return []
    try:
        data = read_json_artifact(client, run_id, artifact_path)
    except json.JSONDecodeError as e:
        raise ExperimentRecordError(f"run {run_id}: artifact {artifact_path} is not valid JSON: {e}") from e
    if not isinstance(data, list) or not all(isinstance(p, dict) for p in data):
        raise ExperimentRecordError(f"run {run_id}: artifact {artifact_path} must be a JSON list of objects")
    return data


def sweep_points(client, *, experiment: str | None = None, parent_run_id: str | None = None) -> tuple[Any, list[dict]]:
    """(parent run, all points of its trials), each point tagged with its trial's `run_id`."""
    if (experiment is None) == (parent_run_id is None):
        raise ValueError("give exactly one of experiment= or parent_run_id=")
    parent = find_parent_run(client, experiment) if experiment is not None else client.get_run(parent_run_id)
    points: list[dict] = []
    for run in child_runs(client, parent.info.run_id, parent.info.experiment_id):
        for p in load_points(client, run.info.run_id):
            points.append({**p, "run_id": run.info.run_id})
    return parent, points


def add_sweep_source_arguments(parser) -> None:
    """The options naming a sweep's MLflow record, shared by `ditscale fit`, `report` and `promote`."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--experiment", help="MLflow experiment of the sweep (its newest sweep run is used)")
    src.add_argument("--parent-run", dest="parent_run", help="id of the sweep's parent run")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")


# ---- registry (read side): the 'champion'



DEFAULT_MODEL_NAME = "ditscale"
CHAMPION_ALIAS = "champion"


class RegistryError(LookupError):
    """The registered model or its alias does not exist (or the registry cannot be read)."""


def _tracking_uri(uri: str | None) -> str:
    """Explicit URI, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (as jobs.mlflow_utils resolves it)."""
    uri = (uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:" and not os.path.isabs(path):
            return f"sqlite:///{Path(path).resolve()}"
    return uri


def _number(v: Any) -> Any:
    """Tag strings that hold numbers as float (tags are strings in MLflow)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def resolve_champion(model_name: str = DEFAULT_MODEL_NAME, tracking_uri: str | None = None,
                     alias: str = CHAMPION_ALIAS) -> dict[str, Any]:
    """The version behind `model_name@alias`: {checkpoint, version, fid, train_flops, run_id, model_name, alias, source, tags, ...}.

    `checkpoint` is the checkpoint directory URI (local path or s3://); numeric tags (fid,
    train_flops, params, val_loss, budget_flops) come back as floats. RegistryError if missing.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = _tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as e:
        raise RegistryError(
            f"no registered model version {model_name!r}@{alias} at {uri!r} (run `ditscale promote` first): {e.message}"
        ) from e
    tags = dict(mv.tags or {})
    record: dict[str, Any] = {
        "model_name": model_name,
        "alias": alias,
        "version": str(mv.version),
        "checkpoint": tags.get("checkpoint") or mv.source,
        "source": mv.source,
        "run_id": mv.run_id,
        "tags": tags,
    }
    for key in ("fid", "train_flops", "params", "val_loss", "budget_flops", "step"):
        record[key] = _number(tags[key]) if key in tags else None
    for key in ("model", "experiment", "parent_run_id"):
        record[key] = tags.get(key)
    return record
