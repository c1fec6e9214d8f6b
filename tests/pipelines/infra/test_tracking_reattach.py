"""Re-attaching to a recorded MLflow run through real tracking failures: a `mlflow server` on loopback behind a TCP
proxy that drops connections on demand. Transient errors are retried and give the same run, an outage longer than
the retries raises, and neither ever creates a second run. Fits read one point per (trial, budget) when a trial was
recorded twice (sqlite store)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from pipelines.infra import tracking
from tests.conftest import loopback_mlflow_server


class FlakyProxy:
    """127.0.0.1 TCP proxy to `target_port`; `fail(n)` resets the open connections and the next n new ones."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.to_fail = 0
        self.refused = 0
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def fail(self, n: int) -> None:
        with self.lock:
            self.to_fail, self.refused = n, 0
            for s in list(self.open):
                _reset(s)
            self.open.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                if self.to_fail > 0:
                    self.to_fail -= 1
                    self.refused += 1
                    _reset(client)
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.target))
                self.open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        self.fail(0)


def _reset(s: socket.socket) -> None:
    """Close with RST (linger 0): the peer sees 'connection reset', a real network failure."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass


@pytest.fixture(scope="module")
def flaky_server(tmp_path_factory):
    """(proxy URL, proxy): a real `mlflow server` (sqlite) on loopback, reached through a FlakyProxy."""
    with loopback_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        proxy = FlakyProxy(urllib.parse.urlsplit(url).port)
        try:
            yield f"http://127.0.0.1:{proxy.port}", proxy
        finally:
            proxy.close()


def _runs_named(client, experiment: str, name: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == name]


@pytest.mark.slow
def test_reattach_retries_transient_errors_and_never_duplicates(flaky_server, tmp_path, monkeypatch):
    url, proxy = flaky_server
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # every failure reaches tracking.retry
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    client = tracking.client(url)
    marker = str(tmp_path / "mlflow_run.json")
    kw = {"experiment": "reattach", "name": "trial-a", "tags": {"ditscale.trial_id": "a"}}
    run_id, created = tracking.attach_run(client, marker, **kw)
    assert created and json.loads(Path(marker).read_text())["run_id"] == run_id
    client.set_terminated(run_id, status="FAILED")  # a driver that died: the run is not RUNNING any more

    # Two connection resets (fewer than the attempts): the restarted driver gets the same run back.
    proxy.fail(2)
    again, created = tracking.attach_run(client, marker, **kw)
    assert proxy.refused == 2  # the failures really happened
    assert (again, created) == (run_id, False)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert [r.info.run_id for r in _runs_named(client, "reattach", "trial-a")] == [run_id]

    # An outage longer than the retries: the error is raised, no new run is created, the marker is unchanged.
    before = Path(marker).read_text()
    proxy.fail(tracking.ATTACH_RETRIES + 10)
    with pytest.raises(MlflowException) as err:  # the REST client's error once its retries are spent
        tracking.attach_run(client, marker, **kw)
    # Every attempt failed: on the reset pooled connection (the first) or on a refused new one (the others).
    assert proxy.refused >= tracking.ATTACH_RETRIES - 1 and not tracking.is_gone(err.value)
    proxy.fail(0)
    assert Path(marker).read_text() == before
    assert [r.info.run_id for r in _runs_named(client, "reattach", "trial-a")] == [run_id]
    assert tracking.attach_run(client, marker, **kw) == (run_id, False)  # the store is back: same run


def test_run_gone_from_the_store_gives_a_new_run(tmp_path):
    """Only a store that says the run does not exist (not a transient error) leads to a new run."""
    client = tracking.client(f"sqlite:///{tmp_path / 'a.db'}", check=False)
    marker = str(tmp_path / "run.json")
    run_id, _ = tracking.attach_run(client, marker, experiment="gone", name="r")
    Path(marker).write_text(json.dumps({"run_id": "0" * 32, "tracking_uri": client.tracking_uri}))
    new_id, created = tracking.attach_run(client, marker, experiment="gone", name="r")
    assert created and new_id not in (run_id, "0" * 32)
    assert json.loads(Path(marker).read_text())["run_id"] == new_id


@pytest.mark.parametrize("folder", ["plain", "it's"])
def test_a_run_left_without_its_marker_is_closed_when_the_next_attempt_starts(tmp_path, folder):
    """A crash between creating the run and writing its marker (or outputs deleted while the run was open) left
    the run RUNNING for ever beside the next attempt's. The next attempt now closes it: KILLED, with the reason."""
    client = tracking.client(f"sqlite:///{tmp_path / 'a.db'}", check=False)
    (tmp_path / folder).mkdir()
    marker, other = str(tmp_path / folder / "run.json"), str(tmp_path / "other.json")
    first, _ = tracking.attach_run(client, marker, experiment="e", name="r")
    neighbour, _ = tracking.attach_run(client, other, experiment="e", name="r2")
    # The same path on another machine (a job of its own, sharing the tracking server) is another place.
    exp_id = client.get_experiment_by_name("e").experiment_id
    elsewhere = client.create_run(exp_id, tags={tracking.MARKER_TAG: "otherhost:" + marker}).info.run_id
    Path(marker).unlink()  # the marker was never written
    second, created = tracking.attach_run(client, marker, experiment="e", name="r")
    assert created and second != first and json.loads(Path(marker).read_text())["run_id"] == second
    old = client.get_run(first)
    assert old.info.status == "KILLED" and old.data.tags[tracking.STATUS_TAG] == "abandoned"
    assert second in old.data.tags[tracking.FAILURE_REASON_TAG] and marker in old.data.tags[tracking.FAILURE_REASON_TAG]
    assert {client.get_run(r).info.status for r in (second, neighbour, elsewhere)} == {"RUNNING"}
    import socket

    assert client.get_run(second).data.tags[tracking.MARKER_TAG] == f"{socket.gethostname()}:{marker}"
    # A finished run of the same marker is history, not an abandoned attempt: it stays FINISHED.
    tracking.end_run(client, second, "finished")
    Path(marker).unlink()
    third, _ = tracking.attach_run(client, marker, experiment="e", name="r")
    assert client.get_run(second).info.status == "FINISHED" and client.get_run(third).info.status == "RUNNING"


def test_read_points_keeps_one_point_per_trial_and_budget(tmp_path):
    """A trial recorded twice (a duplicate child run left by an older driver restart): fit, report and promote
    read each (trial, budget) once, the newest record winning."""
    from jobs.scaling.points import read_points

    client = tracking.client(f"sqlite:///{tmp_path / 'p.db'}", check=False)
    exp = tracking.ensure_experiment(client, "grid")
    parent = client.create_run(exp, run_name="sweep", tags={tracking.ROLE_TAG: tracking.ROLE_SWEEP}).info.run_id

    def child(trial: str, fids: list[float]) -> str:
        tags = {tracking.ROLE_TAG: tracking.ROLE_TRIAL, tracking.PARENT_TAG: parent, tracking.TRIAL_ID_TAG: trial}
        rid = client.create_run(exp, run_name=trial, tags=tags).info.run_id
        points = [
            {"model": trial, "params": 1000, "budget_flops": b, "flops": b, "step": s, "checkpoint": f"/c/{trial}/{s}"}
            | {"fid": f, "trial_id": trial, "run": f"{trial}-main"}
            for (b, s), f in zip(((1e12, 10), (2e12, 20)), fids)
        ]
        client.log_text(rid, json.dumps(points), tracking.POINTS_ARTIFACT)
        return rid

    child("a", [50.0, 40.0])
    newest_a = child("a", [49.0, 39.0])  # the same trial again, recorded later
    child("b", [45.0, 30.0])
    _, points = read_points(client, parent_run_id=parent)
    keys = [(p.trial_id, p.budget_flops) for p in points]
    assert sorted(keys) == [("a", 1e12), ("a", 2e12), ("b", 1e12), ("b", 2e12)]
    a = {p.budget_flops: p for p in points if p.trial_id == "a"}
    assert (a[1e12].fid, a[2e12].fid) == (49.0, 39.0) and a[1e12].run_id == newest_a


def test_set_tags_replaces_values_and_never_cuts_one(tmp_path):
    from mlflow import MlflowClient
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    tracking.set_tags(client, run_id, {"grid.eval": '{"guidance": 2}', "grid.num_trials": 4})
    long = json.dumps(list(range(MAX_TAG_VAL_LENGTH)))
    tracking.set_tags(client, run_id, {"grid.eval": '{"guidance": 3}', "grid.models": long}, too_long="(see grid.json)")
    tags = client.get_run(run_id).data.tags
    assert json.loads(tags["grid.eval"]) == {"guidance": 3} and tags["grid.num_trials"] == "4"
    assert tags["grid.models"] == "(see grid.json)"
