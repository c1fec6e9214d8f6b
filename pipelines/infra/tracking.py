"""MLflow tracking and registry: the one owner of tracking URIs, experiments, runs, tags and the champion.

- URIs: explicit argument > $MLFLOW_TRACKING_URI > the embedded sqlite default `sqlite:///<cwd>/mlflow.db`
  (artifacts beside it in `mlruns/`); relative sqlite paths become absolute so Ray workers with another cwd
  write to the same file; a tracking server is probed before any work (`check_tracking_uri`).
- Runs: `attach_run` re-attaches the run recorded in a marker file next to the job's outputs (a restarted driver
  continues the same run) or creates one. Transient tracking errors are retried; only a run that the store says
  is gone is replaced, so a restart never leaves two child runs for one trial.
- The experiment record (docs/architecture.md, "Experiment record"): one experiment per sweep, a parent run
  (tag ditscale.role=sweep), a child per trial (ditscale.role=trial, mlflow.parentRunId) holding `points.json`.
- Registry: the promoted checkpoint is a registered model version with alias `champion`; `resolve_champion` reads
  it back for serving.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

from pipelines.infra import storage

# Experiment-record vocabulary; import these instead of retyping them.
ROLE_TAG = "ditscale.role"
ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"
ROLE_TRAIN = "train"
ROLE_QUICKSTART = "quickstart"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
STATUS_TAG = "ditscale.status"
FAILURE_REASON_TAG = "ditscale.failure_reason"
HPARAMS_TAG = "ditscale.hparams"  # a trial run's hyper-parameters as the latest grid names them (params keep the first)
TRIAL_ID_TAG = "ditscale.trial_id"
MARKER_TAG = "ditscale.marker"  # the marker file that records the run (attach_run)
POINTS_ARTIFACT = "points.json"
DEFAULT_DB_NAME = "mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlruns"
DEFAULT_MODEL_NAME = "ditscale"
CHAMPION_ALIAS = "champion"
ATTACH_RETRIES = 4  # attempts at re-attaching a recorded run before a tracking error is raised


class TrackingURIError(ConnectionError):
    """The MLflow tracking URI is malformed or its server cannot be reached."""


class ExperimentRecordError(LookupError):
    """An experiment, run or artifact the experiment record promises is missing or malformed."""


class RegistryError(LookupError):
    """The registered model or its alias does not exist, or the registry refused a version."""


# ---- URIs -----------------------------------------------------------------------------------------------


def default_tracking_uri(cwd: str | os.PathLike | None = None) -> str:
    """`sqlite:///<cwd>/mlflow.db`: the embedded default store (artifacts under <cwd>/mlruns)."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    return f"sqlite:///{(base / DEFAULT_DB_NAME).resolve()}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else the sqlite default; relative sqlite paths / bare *.db paths absolute."""
    uri = (uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        return default_tracking_uri()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:" and not os.path.isabs(path):
            return f"sqlite:///{Path(path).resolve()}"
        return uri
    if "://" not in uri and uri.endswith(".db"):
        return f"sqlite:///{Path(uri).expanduser().resolve()}"
    return uri


def _probe_http(resolved: str, timeout: float) -> list[str]:
    """Errors of GET /health and the experiments search (servers behind a proxy may lack /health); [] = reachable."""
    base, errors = resolved.rstrip("/"), []
    for path in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            with urllib.request.urlopen(base + path, timeout=timeout) as resp:  # noqa: S310 (http(s) only)
                if 200 <= resp.status < 300:
                    return []
                errors.append(f"GET {path}: HTTP {resp.status}")
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):  # reachable, only authentication in the way: MLflow will use its creds
                return []
            errors.append(f"GET {path}: HTTP {e.code}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            errors.append(f"GET {path}: {reason}")
            if isinstance(reason, (ConnectionRefusedError, TimeoutError)) or "timed out" in str(reason):
                break  # nothing listens / nothing answers: the second probe would fail the same way
    return errors


def check_tracking_uri(uri: str | None = None, timeout: float = 3.0, must_exist: bool = False) -> str:
    """Resolve `uri` and fail fast (TrackingURIError) when it cannot work; returns the resolved URI.

    http(s): the server must answer; sqlite: the database's directory must exist, and with `must_exist` (commands
    that read what a sweep recorded) the database itself, so a lookup never creates an empty store; other schemes
    pass unchecked.
    """
    resolved = resolve_tracking_uri(uri)
    parsed = urllib.parse.urlparse(resolved)
    if parsed.scheme in ("http", "https"):
        if not parsed.netloc:
            raise TrackingURIError(f"MLflow tracking URI {resolved!r} has no host")
        errors = _probe_http(resolved, timeout)
        if errors:
            raise TrackingURIError(
                f"MLflow tracking server {resolved!r} is unreachable ({'; '.join(errors)}). Start it "
                f"(`mlflow server --host ... --port ...`), fix --tracking-uri / MLFLOW_TRACKING_URI, or omit it "
                f"to use the local sqlite store."
            )
    elif parsed.scheme == "sqlite":
        path = resolved[len("sqlite:///") :] if resolved.startswith("sqlite:///") else ""
        if path and path != ":memory:" and not Path(path).parent.is_dir():
            raise TrackingURIError(
                f"MLflow tracking URI {resolved!r}: directory {str(Path(path).parent)!r} does not exist"
            )
        if must_exist and path and path != ":memory:" and not Path(path).is_file():
            raise TrackingURIError(
                f"no MLflow store at {path!r} (nothing has been tracked there): give the sweep's store with "
                f"--tracking-uri or MLFLOW_TRACKING_URI"
            )
        if path and path != ":memory:" and Path(path).exists() and not _is_sqlite_file(Path(path)):
            raise TrackingURIError(
                f"MLflow tracking URI {resolved!r}: {path!r} is not an SQLite database (a store is one file "
                f"starting 'SQLite format 3'); give the sweep's store, or a new file name for a new store"
            )
    return resolved


def _is_sqlite_file(path: Path) -> bool:
    """An SQLite database file (its header), or an empty file (SQLite makes it a database on first write)."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(16)
    return head == b"" or head == b"SQLite format 3\x00"


def default_artifact_root(tracking_uri: str) -> str | None:
    """Artifact root beside a sqlite database (`<db dir>/mlruns`), None for servers (they choose)."""
    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri[len("sqlite:///") :]
        if path and path != ":memory:":
            return (Path(path).parent / DEFAULT_ARTIFACT_DIR).resolve().as_uri()
    return None


def client(tracking_uri: str | None = None, check: bool = True, must_exist: bool = False) -> Any:
    """An `MlflowClient` on the resolved URI, tracking and registry on the same store (telemetry off);
    `must_exist`: a sqlite store must already exist (see `check_tracking_uri`)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    uri = check_tracking_uri(tracking_uri, must_exist=must_exist) if check else resolve_tracking_uri(tracking_uri)
    if not check or urllib.parse.urlparse(uri).scheme in ("http", "https", "sqlite"):
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    # Other stores (a file:// or plain directory store, postgresql://, ...) fail when built or first used, deep
    # inside MLflow: build it and try one cheap read now, and name the URI.
    from mlflow.exceptions import MlflowException

    try:
        c = MlflowClient(tracking_uri=uri, registry_uri=uri)
        c.search_experiments(max_results=1)
    except (MlflowException, ImportError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TrackingURIError(
            f"MLflow tracking URI {uri!r} cannot be used: {first[:300]} (use sqlite:///path/mlflow.db or an "
            "http(s) server)"
        ) from None
    return c


# ---- experiments and runs -------------------------------------------------------------------------------


def folder_name(name: str) -> str:
    """`name` (an experiment's, a run's) as one safe folder name: letters, digits, '-', '_' and '.' kept, anything
    else '_', and never '', '.' or '..' or a leading '.' (so 'team/sweep', '/Users/me/x' or '..' stay inside the
    folder they are put in)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return safe if safe and not safe.startswith(".") else f"_{safe}"


def ensure_experiment(mlflow_client: Any, name: str, artifact_location: str | None = None) -> str:
    """Experiment id of `name`, created if missing (sqlite: artifacts in `<db dir>/mlruns/<name>`); a deleted one
    of that name is restored rather than failing."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    if artifact_location is None:
        root = default_artifact_root(mlflow_client.tracking_uri)
        if root is not None:
            artifact_location = f"{root}/{folder_name(name)}"
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # a concurrent creator won the race: use theirs
        exp = mlflow_client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def get_experiment_id(mlflow_client: Any, name: str) -> str:
    """Id of an existing experiment; ExperimentRecordError listing the known names otherwise."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        names = sorted(e.name for e in mlflow_client.search_experiments(max_results=50))
        raise ExperimentRecordError(
            f"MLflow experiment {name!r} not found at {mlflow_client.tracking_uri!r}; known: {names}"
        )
    return exp.experiment_id


def is_gone(exc: Exception) -> bool:
    """True when the tracking store says the run does not exist (not a transient failure)."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def retry(
    fn: Callable[[], Any],
    *,
    attempts: int = ATTACH_RETRIES,
    what: str = "tracking call",
    giveup: Callable[[Exception], bool] = is_gone,
) -> Any:
    """fn() retried with exponential back-off on errors `giveup` does not accept as final; the last error raises."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - the classifier decides; the last attempt re-raises
            if giveup(exc) or i == attempts - 1:
                raise
            time.sleep(0.5 * 2**i)  # back-off before the next attempt at a flaky tracking server


def attach_run(
    mlflow_client: Any,
    marker: str,
    *,
    experiment: str,
    name: str,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> tuple[str, bool]:
    """(run id, created): the run recorded at `marker` (status back to RUNNING), else a new run recorded there.

    `marker` is a JSON file URI (local or s3://) beside the job's outputs holding {"run_id", "tracking_uri",
    "experiment"}. A marker of another tracking store, or a run the store no longer has or that was deleted (the UI's
    "delete run", or its experiment deleted), gives a new run; a marker of another experiment is an
    ExperimentRecordError (the run records there); any other error is retried and finally raised, never answered
    with a duplicate run. A re-attached run is put under `parent_run_id` (its parent may have been replaced).
    """
    uri = mlflow_client.tracking_uri
    if storage.exists(marker):
        rec = storage.read_json(marker)
        run_id = rec.get("run_id") or rec.get("parent_run_id")
        if run_id and rec.get("tracking_uri", uri) == uri and _live(mlflow_client, run_id, marker):
            was = rec.get("experiment")
            if was and was != experiment:
                raise ExperimentRecordError(
                    f"{marker} records MLflow run {run_id} in experiment {was!r}, not {experiment!r}: rerun with "
                    f"mlflow.experiment={was}, or give the run another name or output"
                )
            try:
                retry(lambda: mlflow_client.update_run(run_id, status="RUNNING"), what=f"re-attach run {run_id}")
                if parent_run_id:
                    mlflow_client.set_tag(run_id, PARENT_TAG, parent_run_id)
                return run_id, False
            except Exception as exc:  # noqa: BLE001
                if not is_gone(exc):
                    raise
    exp_id = ensure_experiment(mlflow_client, experiment)
    where = marker_place(marker)
    run_tags = {RUN_NAME_TAG: name, MARKER_TAG: where, **(tags or {})}
    if parent_run_id:
        run_tags[PARENT_TAG] = parent_run_id
    run = mlflow_client.create_run(exp_id, run_name=name, tags=run_tags)
    storage.write_json(marker, {"run_id": run.info.run_id, "tracking_uri": uri, "experiment": experiment})
    try:
        retry(lambda: close_abandoned(mlflow_client, exp_id, where, keep=run.info.run_id), what="close abandoned runs")
    except Exception as exc:  # noqa: BLE001 - tidying an earlier attempt's run must not fail this one
        import sys

        print(f"warning: runs an earlier attempt at {marker} left RUNNING were not closed: {exc}", file=sys.stderr)
    return run.info.run_id, True


def _live(mlflow_client: Any, run_id: str, marker: str) -> bool:
    """False when the store has no run `run_id` or it was deleted (a new run replaces it, said on stderr)."""
    try:
        run = retry(lambda: mlflow_client.get_run(run_id), what=f"read run {run_id}")
    except Exception as exc:  # noqa: BLE001
        if is_gone(exc):
            return False
        raise
    if run.info.lifecycle_stage == "deleted":
        import sys

        print(f"[ditscale] MLflow run {run_id} ({marker}) was deleted: recording into a new run", file=sys.stderr)
        return False
    return True


def marker_place(marker: str) -> str:
    """The `ditscale.marker` tag of a run recorded by `marker`: the s3:// URI, or host:absolute path for a local
    file (the same local path on two machines is two places; runs of one are never closed by the other)."""
    if storage.is_s3(marker):
        return marker
    import socket

    return f"{socket.gethostname()}:{os.path.abspath(os.path.expanduser(marker))}"


def close_abandoned(mlflow_client: Any, experiment_id: str, where: str, keep: str) -> list[str]:
    """KILLED, with the reason, for the RUNNING runs tagged `ditscale.marker=where` (`marker_place`) other than
    `keep`: runs of an earlier attempt that never wrote the marker (a crash between creating the run and writing
    it) or whose marker went (the outputs deleted while the run was open). Without this they stayed RUNNING for
    ever. Returns their ids."""
    if "'" in where and '"' in where:
        return []  # not expressible in a search filter; nothing is closed
    quote = '"' if "'" in where else "'"
    query = f"tags.`{MARKER_TAG}` = {quote}{where}{quote} and attributes.status = 'RUNNING'"
    found = _search_all(mlflow_client, [experiment_id], query)
    closed = [r.info.run_id for r in found if r.info.run_id != keep]
    for run_id in closed:
        set_tags(
            mlflow_client,
            run_id,
            {STATUS_TAG: "abandoned", FAILURE_REASON_TAG: f"abandoned: run {keep} was started for {where} after it"},
        )
        mlflow_client.set_terminated(run_id, status="KILLED")
    return closed


def log_params_once(mlflow_client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log the params not yet on the run (params are immutable; a resumed driver logs the same values again)."""
    from mlflow.entities import Param

    have = mlflow_client.get_run(run_id).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in have]
    for i in range(0, len(new), 100):
        mlflow_client.log_batch(run_id, params=new[i : i + 100])


def set_tags(mlflow_client: Any, run_id: str, tags: dict[str, Any], too_long: str = "(too long for a tag)") -> None:
    """Set (or replace) the run's tags in one call, as strings; a value over MLflow's tag length is replaced by
    `too_long` (never cut: a cut JSON value would not parse)."""
    from mlflow.entities import RunTag
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    values = {k: str(v) for k, v in tags.items()}
    mlflow_client.log_batch(
        run_id, tags=[RunTag(k, v if len(v) <= MAX_TAG_VAL_LENGTH else too_long) for k, v in values.items()]
    )


def log_metrics(mlflow_client: Any, run_id: str, values: dict[str, Any], step: int, nan: bool = False) -> None:
    """Log the finite numeric values of `values` at `step` in one batch (`nan`: NaN values too, where a metric
    must say "none now" rather than keep an earlier value)."""
    import math

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    metrics = []
    for key, value in values.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v) or (nan and math.isnan(v)):
            metrics.append(Metric(key, v, ts, int(step)))
    if metrics:
        mlflow_client.log_batch(run_id, metrics=metrics)


def end_run(mlflow_client: Any, run_id: str, status: str, reason: str | None = None) -> None:
    """Mark a run finished / failed: tag ditscale.status (+ the failure reason) and set the MLflow run status."""
    mlflow_client.set_tag(run_id, STATUS_TAG, status)
    if reason:
        mlflow_client.set_tag(run_id, FAILURE_REASON_TAG, reason[:5000])
    elif status == "finished" and FAILURE_REASON_TAG in (mlflow_client.get_run(run_id).data.tags or {}):
        mlflow_client.delete_tag(run_id, FAILURE_REASON_TAG)  # an earlier attempt's reason is not this run's
    mlflow_client.set_terminated(run_id, status="FINISHED" if status == "finished" else "FAILED")


# ---- reading the experiment record ------------------------------------------------------------------------


def _search_all(mlflow_client: Any, experiment_ids: list[str], filter_string: str) -> list:
    """All runs matching the filter (follows page tokens), newest first."""
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            max_results=1000,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_parent_run(mlflow_client: Any, experiment_name: str) -> Any:
    """The newest sweep (parent) run of an experiment: tag ditscale.role=sweep, else a run that has children."""
    exp_id = get_experiment_id(mlflow_client, experiment_name)
    runs = _search_all(mlflow_client, [exp_id], f"tags.`{ROLE_TAG}` = '{ROLE_SWEEP}'")
    if runs:
        return runs[0]
    children = _search_all(mlflow_client, [exp_id], "")
    parent_ids = [r.data.tags.get(PARENT_TAG) for r in children if r.data.tags.get(PARENT_TAG)]
    if parent_ids:
        return mlflow_client.get_run(parent_ids[0])
    raise ExperimentRecordError(
        f"experiment {experiment_name!r} has no sweep run (tag {ROLE_TAG}={ROLE_SWEEP}) and no child runs"
    )


def child_runs(mlflow_client: Any, parent_run_id: str, experiment_id: str | None = None) -> list:
    """Trial runs whose tag mlflow.parentRunId is `parent_run_id`, oldest first."""
    if experiment_id is None:
        experiment_id = mlflow_client.get_run(parent_run_id).info.experiment_id
    runs = _search_all(mlflow_client, [experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def read_json_artifact(mlflow_client: Any, run_id: str, artifact_path: str) -> Any:
    """One small JSON artifact of a run, parsed (without MLflow's per-file download progress bar)."""
    quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
    if quiet:
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow_client.download_artifacts(run_id, artifact_path, dst_path=tmp)
            return json.loads(Path(local).read_text())
    finally:
        if quiet:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)


def load_points(mlflow_client: Any, run_id: str, artifact_path: str = POINTS_ARTIFACT) -> list[dict[str, Any]]:
    """The `points.json` list of one trial run ([] when the run has not logged it yet)."""
    names = {a.path for a in mlflow_client.list_artifacts(run_id)}
    if artifact_path not in names:
        return []
    try:
        data = read_json_artifact(mlflow_client, run_id, artifact_path)
    except json.JSONDecodeError as e:
        raise ExperimentRecordError(f"run {run_id}: artifact {artifact_path} is not valid JSON: {e}") from e
    if not isinstance(data, list) or not all(isinstance(p, dict) for p in data):
        raise ExperimentRecordError(f"run {run_id}: artifact {artifact_path} must be a JSON list of objects")
    return data


def _run(mlflow_client: Any, run_id: str) -> Any:
    """The run with this id; ExperimentRecordError naming it when the store has none."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_run(run_id)
    except MlflowException as e:
        raise ExperimentRecordError(f"no run with id {run_id!r} in {mlflow_client.tracking_uri}") from e


def sweep_points(
    mlflow_client: Any, *, experiment: str | None = None, parent_run_id: str | None = None
) -> tuple[Any, list[dict]]:
    """(parent run, the points of its trials as dicts, each with its trial's `run_id`)."""
    if (experiment is None) == (parent_run_id is None):
        raise ValueError("give exactly one of experiment= or parent_run_id=")
    parent = (
        find_parent_run(mlflow_client, experiment) if experiment is not None else _run(mlflow_client, parent_run_id)
    )
    tags = parent.data.tags or {}
    role = tags.get(ROLE_TAG) or ("trial" if TRIAL_ID_TAG in tags else None)
    if role and role != ROLE_SWEEP:  # `report` printed "0 points" with exit 0 for a trial's run id
        up = tags.get("mlflow.parentRunId")
        raise ExperimentRecordError(
            f"run {parent.info.run_id} is a {role} run{f' of sweep run {up}' if up else ''}, not a sweep's: give "
            "the sweep's (parent) run id, or --experiment"
        )
    points: list[dict] = []
    for run in grid_trial_runs(mlflow_client, parent):
        for p in load_points(mlflow_client, run.info.run_id):
            points.append({**p, "run_id": run.info.run_id})
    return parent, points


def grid_trial_runs(mlflow_client: Any, parent: Any) -> list:
    """The trial runs of the grid a sweep (its parent run) ran last, oldest first: a trial of an earlier grid of the
    sweep (other models, budgets or evaluation settings) is left out."""
    grid = current_grid(mlflow_client, parent.info.run_id)
    return [
        run
        for run in child_runs(mlflow_client, parent.info.run_id, parent.info.experiment_id)
        if grid is None or (run.data.tags or {}).get(TRIAL_ID_TAG) is None or run.data.tags[TRIAL_ID_TAG] in grid
    ]


def failed_trials(mlflow_client: Any, parent_run_id: str) -> list[dict]:
    """The trials of a sweep's current grid whose MLflow run ended FAILED, each as {"model", "hparams", "trial_id",
    "run_id", "failed": the recorded reason}: a trial that failed (say, diverged) has no points to show it by."""
    out = []
    for run in grid_trial_runs(mlflow_client, _run(mlflow_client, parent_run_id)):
        tags, params = run.data.tags or {}, run.data.params or {}
        if tags.get(STATUS_TAG) != "failed":
            continue
        try:  # the tags hold the latest grid's (params keep the first invocation's)
            hparams = json.loads(tags.get(HPARAMS_TAG) or params.get("hparams") or "{}")
        except ValueError:
            hparams = {}
        out.append(
            {
                "model": tags.get(RUN_NAME_TAG) or params.get("model"),
                "lr": params.get("lr"),
                "hparams": hparams if isinstance(hparams, dict) else {},
                "trial_id": tags.get(TRIAL_ID_TAG) or params.get("trial_id"),
                "run_id": run.info.run_id,
                "failed": tags.get(FAILURE_REASON_TAG) or "failed (no reason recorded)",
            }
        )
    return out


GRID_ARTIFACT = "config/grid.json"  # {"trial_ids": [...]}: the trials of the sweep's latest invocation


def current_grid(mlflow_client: Any, parent_run_id: str) -> set[str] | None:
    """The trial ids of the grid a sweep ran last (None for a record without one): a rerun with another grid or
    other evaluation settings makes new trials, and the old ones' points stay out of the fits."""
    names = {a.path for a in mlflow_client.list_artifacts(parent_run_id, GRID_ARTIFACT.rsplit("/", 1)[0])}
    if GRID_ARTIFACT not in names:
        return None
    return set(read_json_artifact(mlflow_client, parent_run_id, GRID_ARTIFACT).get("trial_ids") or [])


# ---- registry ---------------------------------------------------------------------------------------------


def register_checkpoint(
    mlflow_client: Any,
    source: str,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    alias: str = CHAMPION_ALIAS,
    run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    description: str = "",
) -> tuple[Any, bool]:
    """(model version, created): register checkpoint directory `source` (reusing a version that already points at
    it) and point `alias` at it."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(model_name)
    except MlflowException:
        mlflow_client.create_registered_model(model_name, description="ditscale checkpoints (safetensors dirs)")
    from pipelines.export.pyfunc import PYFUNC_TAG

    existing = [
        mv
        for mv in mlflow_client.search_model_versions(f"name='{model_name}'")
        if (mv.tags or {}).get("checkpoint") == source and PYFUNC_TAG not in (mv.tags or {})  # a bare version
    ]
    created = not existing
    clean = {k: str(v) for k, v in {"checkpoint": source, **(tags or {})}.items() if v is not None}
    if existing:
        mv = max(existing, key=lambda v: int(v.version))
        for k, v in clean.items():  # a re-evaluated FID or another sweep's tags replace the stale ones
            mlflow_client.set_model_version_tag(model_name, mv.version, k, v)
        mlflow_client.update_model_version(model_name, mv.version, description=description)
    else:
        try:
            mv = mlflow_client.create_model_version(
                model_name, source=source, run_id=run_id, tags=clean, description=description
            )
        except MlflowException as e:
            raise RegistryError(
                f"registry refused checkpoint source {source!r}: {e.message}. A tracking server only accepts "
                f"sources in shared storage (e.g. s3://) or inside the run's artifact directory; write "
                f"checkpoints to s3:// when tracking with a server."
            ) from e
    mlflow_client.set_registered_model_alias(model_name, alias, mv.version)
    return mv, created


def _number(v: Any) -> Any:
    """Tag strings that hold numbers as float (tags are strings in MLflow)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def check_registry_names(model_name: str, alias: str | None = None) -> None:
    """ValueError naming a registered-model name or alias the registry would refuse, checked before anything is
    registered (a promotion registered its version, then failed on the alias and left it unnamed): a name is
    non-empty without '/', ':', quotes or backslashes; an alias is letters, digits, '_' and '-', and not 'latest'
    or 'v<number>', which name versions."""
    import re

    if not str(model_name or "").strip() or any(c in model_name for c in "/:'\"\\"):
        raise ValueError(
            f"--model-name {model_name!r}: a registered model name is non-empty, without '/', ':', quotes or '\\' "
            "(the registry's search filters cannot hold them)"
        )
    if alias is not None:
        if not re.fullmatch(r"[\w-]+", alias):
            raise ValueError(f"--alias {alias!r}: an alias is letters, digits, '_' and '-'")
        if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
            raise ValueError(f"--alias {alias!r}: reserved by the registry ('latest' and v<number> name versions)")


def resolve_champion(
    model_name: str = DEFAULT_MODEL_NAME, tracking_uri: str | None = None, alias: str = CHAMPION_ALIAS
) -> dict[str, Any]:
    """The version behind `model_name@alias`: {checkpoint, version, fid, train_flops, run_id, tags, ...}.

    `checkpoint` is the checkpoint directory URI (local path or s3://); numeric tags (fid, train_flops, params,
    val_loss, budget_flops, step) come back as floats. RegistryError if the model or alias is missing.
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri, check=False)
    try:
        mv = mlflow_client.get_model_version_by_alias(model_name, alias)
    except MlflowException as e:
        raise RegistryError(
            f"no registered model version {model_name!r}@{alias} at {mlflow_client.tracking_uri!r} "
            f"(run `ditscale promote` first): {e.message}"
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


# ---- images ---------------------------------------------------------------------------------------------

SAMPLES_DIR = "samples"  # run artifact folder of sample grids
GRID_SAMPLES = 16  # images in a budget point's / the champion's sample grid


def _grid_png(images: Any, cols: int | None = None) -> bytes:
    """PNG bytes of uint8 images [B,H,W,3] laid out as one grid (cols = ceil(sqrt(B)) by default)."""
    import io
    import math

    import numpy as np
    from PIL import Image

    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or arr.shape[0] == 0:
        raise ValueError(f"sample grid: expected uint8 images [B,H,W,3] with B >= 1, got {arr.dtype} {arr.shape}")
    b, h, w, _ = arr.shape
    cols = max(1, min(int(cols or math.ceil(math.sqrt(b))), b))
    rows = math.ceil(b / cols)
    grid = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for i, img in enumerate(arr):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = img
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return buf.getvalue()


def log_sample_grid(mlflow_client: Any, run_id: str, images: Any, artifact_file: str, cols: int | None = None) -> str:
    """Log uint8 images [B,H,W,3] as one PNG grid artifact `artifact_file` (e.g. samples/step_00000100.png) of
    run `run_id`; returns the artifact path. ValueError naming the shape of anything that is not such a batch."""
    if not str(artifact_file).endswith(".png"):
        raise ValueError(f"sample grid artifact {artifact_file!r}: the name must end in .png")
    data = _grid_png(images, cols)
    head, name = os.path.split(str(artifact_file))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(data)
        retry(lambda: mlflow_client.log_artifact(run_id, path, artifact_path=head or None), what="log sample grid")
    return str(artifact_file)


def has_artifact(mlflow_client: Any, run_id: str, artifact_file: str) -> bool:
    """Whether run `run_id` already holds artifact `artifact_file`."""
    head = os.path.dirname(str(artifact_file)) or None
    return any(a.path == str(artifact_file) for a in mlflow_client.list_artifacts(run_id, head))


def checkpoint_samples(
    checkpoint: str,
    *,
    sampler: str = "euler",
    steps: int = 20,
    guidance: float = 1.0,
    seed: int = 0,
    n: int = GRID_SAMPLES,
) -> Any:
    """The first `n` evaluation samples of a checkpoint (uint8 [n,H,W,3]): class i mod num_classes, or the text of
    data set row i, with seed `seed * 1_000_003 + i` (the evaluation rule, so the grid shows FID's own samples)."""
    import numpy as np
    import torch

    from pipelines.generation import GenerationPipeline, SamplerSettings

    pipe = GenerationPipeline.from_checkpoint(checkpoint, text_encoder=False)
    seeds = [int(seed) * 1_000_003 + i for i in range(n)]
    settings = SamplerSettings(sampler=sampler, steps=steps, guidance=guidance)
    if pipe.conditioning == "class":
        return pipe.generate_labels([i % int(pipe.num_classes) for i in range(n)], seeds, settings)
    from pipelines.latents.reader import load_latents_numpy

    rows = load_latents_numpy(pipe.manifest_uri, limit=n, columns=["text_emb", "text_mask", "text_pooled"])
    if len(rows.get("text_emb", [])) == 0:
        raise ValueError(f"{pipe.manifest_uri}: empty data set, no captions to condition the sample grid on")
    idx = np.arange(n) % len(rows["text_emb"])
    cond = {k: torch.from_numpy(np.ascontiguousarray(rows[k][idx])) for k in ("text_emb", "text_mask", "text_pooled")}
    cond = {k: v.float() if v.is_floating_point() else v.bool() for k, v in cond.items()}
    return pipe.generate(cond, seeds, settings)


def log_checkpoint_grid(
    mlflow_client: Any, run_id: str, checkpoint: str, artifact_file: str, **sample_kwargs: Any
) -> str | None:
    """Sample a checkpoint (`checkpoint_samples`) and log the grid to `run_id` once: an artifact already there is
    kept (a re-evaluated point logs nothing). Returns the artifact path, or None when it was already logged."""
    if has_artifact(mlflow_client, run_id, artifact_file):
        return None
    return log_sample_grid(mlflow_client, run_id, checkpoint_samples(checkpoint, **sample_kwargs), artifact_file)
