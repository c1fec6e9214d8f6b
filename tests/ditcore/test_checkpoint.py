"""Checkpoint directories: round trip, atomic write, optimizer resume, and clear errors for bad files."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ditcore.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    read_checkpoint_config,
    save_checkpoint,
    step_dir,
)
from ditcore.flops import example_inputs
from ditcore.models import build_model, config_to_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained(name="DiT-T/2", steps=2):
    torch.manual_seed(0)
    model = build_model(name)
    opt = torch.optim.AdamW(model.param_groups(1e-3, weight_decay=0.01))
    inputs = example_inputs(model.config, batch_size=2)
    for _ in range(steps):
        loss = (model(**inputs) - inputs["x"]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    return model, ema, opt, inputs


def _save(tmp_path, name="DiT-T/2", step=10, **kw):
    model, ema, opt, inputs = _trained(name)
    config = {"objective": {"process": "flow"}, "data": {"manifest": "s3://b/m"}}
    path = save_checkpoint(
        step_dir(tmp_path / "ckpts", step),
        model=model,
        ema=ema,
        config=config,
        state={"step": step, "images_seen": 20},
        optimizer=opt,
        **kw,
    )
    return path, model, ema, opt, inputs


@pytest.mark.parametrize("name", ["DiT-T/2", "MMDiT-T-flux"])
def test_round_trip_model_ema_config_state(tmp_path, name):
    path, model, ema, _, inputs = _save(tmp_path, name)
    assert path.name == "step_00000010"
    assert {p.name for p in path.iterdir()} >= {
        "model.safetensors",
        "ema.safetensors",
        "config.json",
        "state.json",
        "optimizer.safetensors",
        "optimizer.json",
    }
    ck = load_checkpoint(path)  # EMA by default
    assert ck.state == {"step": 10, "images_seen": 20}
    assert ck.config["model"] == config_to_dict(model.config)
    assert ck.config["data"]["manifest"] == "s3://b/m"
    assert not ck.model.training
    with torch.no_grad():
        torch.testing.assert_close(ck.model(**inputs), ema.eval()(**inputs), rtol=0, atol=0)
        raw = load_checkpoint(path, use_ema=False).model
        torch.testing.assert_close(raw(**inputs), model.eval()(**inputs), rtol=0, atol=0)
    assert read_checkpoint_config(path)["model"]["arch"] == model.config.arch


def test_optimizer_state_resumes_identically(tmp_path):
    path, model, _, opt, inputs = _save(tmp_path)
    ck = load_checkpoint(path, use_ema=False)
    opt2 = torch.optim.AdamW(ck.model.param_groups(1e-3, weight_decay=0.01))
    load_optimizer_state(path, opt2)
    ck.model.train()
    model.train()
    for m, o in ((model, opt), (ck.model, opt2)):
        loss = (m(**inputs) - inputs["x"]).pow(2).mean()
        o.zero_grad()
        loss.backward()
        o.step()
    for a, b in zip(model.parameters(), ck.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert opt2.param_groups[0]["name"] == opt.param_groups[0]["name"]


def _pickle_free_format(f: Path) -> str | None:
    """The format of a checkpoint file when it is one that cannot hold a pickle (JSON or safetensors), else None.

    Decided by parsing, not by name or magic bytes: a pickle of any protocol (0-5) or a torch.save zip fails both."""
    from safetensors import safe_open

    data = f.read_bytes()
    if f.suffix == ".json":
        try:
            json.loads(data.decode("utf-8"))
            return "json"
        except (UnicodeDecodeError, ValueError):
            return None
    if f.suffix == ".safetensors":
        try:
            with safe_open(str(f), framework="pt") as sf:
                list(sf.keys())
            return "safetensors"
        except Exception:  # noqa: BLE001 - anything safetensors cannot parse is not a safetensors file
            return None
    return None


def test_pickle_checker_rejects_every_protocol(tmp_path):
    import pickle

    obj = {"w": torch.ones(2)}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for name in (f"p{protocol}.bin", f"p{protocol}.json", f"p{protocol}.safetensors"):
            (tmp_path / name).write_bytes(pickle.dumps(obj, protocol=protocol))
            assert _pickle_free_format(tmp_path / name) is None, (protocol, name)
    for name, kw in (("zip.safetensors", {}), ("legacy.json", {"_use_new_zipfile_serialization": False})):
        torch.save(obj, tmp_path / name, **kw)  # torch.save: a zip holding data.pkl, or a bare protocol-2 pickle
        assert _pickle_free_format(tmp_path / name) is None, name
    save_file({"w": torch.ones(2)}, str(tmp_path / "ok.safetensors"))
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert _pickle_free_format(tmp_path / "ok.safetensors") == "safetensors"
    assert _pickle_free_format(tmp_path / "ok.json") == "json"


def test_no_pickle_anywhere(tmp_path):
    path, *_ = _save(tmp_path)
    files = [f for f in path.rglob("*") if f.is_file()]
    assert {f.name for f in files} >= {"model.safetensors", "optimizer.safetensors", "config.json"}
    for f in files:
        assert _pickle_free_format(f) is not None, f"{f.name} is neither JSON nor safetensors"


def test_without_ema_loads_model_weights(tmp_path):
    model, _, _, inputs = _trained()
    path = save_checkpoint(tmp_path / "c", model=model, config={}, state={"step": 1})
    assert not (path / "ema.safetensors").exists()
    ck = load_checkpoint(path)
    assert ck.weights == "model.safetensors"
    with torch.no_grad():
        torch.testing.assert_close(ck.model(**inputs), model.eval()(**inputs), rtol=0, atol=0)


def test_overwrite_and_latest(tmp_path):
    root = tmp_path / "ckpts"
    assert latest_checkpoint(root) is None
    model, _, _, _ = _trained(steps=0)
    for step in (5, 100, 20):
        save_checkpoint(step_dir(root, step), model=model, config={}, state={"step": step})
    save_checkpoint(step_dir(root, 100), model=model, config={}, state={"step": 100, "again": True})
    (root / "step_00000200").mkdir()  # incomplete directory (no config.json) is ignored
    (root / ".step_00000300.tmp-abc").mkdir()
    assert latest_checkpoint(root) == step_dir(root, 100)
    assert load_checkpoint(latest_checkpoint(root)).state["again"] is True
    assert not [p for p in root.iterdir() if p.name.startswith(".")][1:]  # no leftovers besides the fake tmp


def test_failed_save_leaves_nothing_loadable(tmp_path):
    model, _, _, _ = _trained(steps=0)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "c", model=model, config={}, state={"bad": object()})
    assert not (tmp_path / "c").exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_file_names_it(tmp_path):
    path, *_ = _save(tmp_path)
    os.remove(path / "ema.safetensors")
    with pytest.raises(CheckpointError, match=r"ema\.safetensors.*missing"):
        load_checkpoint(path)
    os.remove(path / "checkpoint.json")
    os.remove(path / "config.json")
    with pytest.raises(CheckpointError, match=r"config\.json.*missing"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


@pytest.mark.parametrize("fname", ["model.safetensors", "optimizer.safetensors", "state.json"])
def test_truncated_file_names_it(tmp_path, fname):
    path, _, _, opt, _ = _save(tmp_path)
    data = (path / fname).read_bytes()
    (path / fname).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=fname.replace(".", r"\.")):
        load_checkpoint(path, use_ema=False)
    os.remove(path / "checkpoint.json")  # without the size table the format checks still catch it
    with pytest.raises(CheckpointError, match=fname.replace(".", r"\.")):
        if fname == "optimizer.safetensors":
            load_optimizer_state(path, opt)
        else:
            load_checkpoint(path, use_ema=False)


def test_mismatched_weights_name_file_and_tensor(tmp_path):
    path, *_ = _save(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"]["hidden_size"] = 128
    (path / "config.json").write_text(json.dumps(cfg))
    os.remove(path / "checkpoint.json")
    with pytest.raises(CheckpointError, match=r"ema\.safetensors.*shape"):
        load_checkpoint(path)
    cfg["model"]["depth"] = 3
    cfg["model"]["hidden_size"] = 64
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"ema\.safetensors.*missing \['blocks\.2"):
        load_checkpoint(path)
    cfg["model"]["depht"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json.*depht"):
        load_checkpoint(path)


def test_optimizer_mismatch_is_an_error(tmp_path):
    path, *_ = _save(tmp_path)
    other = build_model("DiT-T/2", depth=3)
    with pytest.raises(CheckpointError, match=r"optimizer\.json"):
        load_optimizer_state(path, torch.optim.AdamW(other.param_groups(1e-3)))


def test_wrapped_models_and_config_dataclass(tmp_path):
    from torch.optim.swa_utils import AveragedModel

    model, _, _, inputs = _trained()
    ema = AveragedModel(model)
    wrapped = torch.nn.parallel.DistributedDataParallel.__new__(torch.nn.parallel.DistributedDataParallel)
    torch.nn.Module.__init__(wrapped)
    wrapped.module = model  # what Ray Train's prepare_model returns on several workers
    path = save_checkpoint(tmp_path / "c", model=wrapped, ema=ema, config={"model": model.config}, state={})
    ck = load_checkpoint(path)
    assert ck.config["model"] == config_to_dict(model.config) and "model_requested" not in ck.config
    with torch.no_grad():
        torch.testing.assert_close(ck.model(**inputs), model.eval()(**inputs), rtol=0, atol=0)
