"""Quickstart modes: the sizes of every stage for the full run (`make quickstart`) and `--tiny` (the README test)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Prompts the served champion draws over HTTP and the per-model sample grids use: captions of the built-in grammar
# (size, colour, shape and position of every object), so they ask for nothing the training captions never said.
PROMPTS = [
    "a large red circle in the center",
    "a small blue square at the top left",
    "a large green triangle at the bottom right",
    "a large yellow square on the left and a small red circle on the right",
]
GUIDANCE = 2.0  # classifier-free guidance of the served requests and the grids


@dataclass
class Mode:
    """Sizes of every stage for one quickstart mode."""

    name: str
    image_size: int
    vae: dict[str, Any]  # overrides of TrainVAEConfig
    features: dict[str, Any]  # overrides of TrainFeaturesConfig
    precompute: list[str]  # k=v overrides of configs/precompute/builtin.yaml
    sweep: list[str]  # k=v overrides of configs/sweep/tiny.yaml
    serve_steps: int
    grid_images: int  # images per model in the report's sample grids
    n_boot: int = 200  # bootstrap resamples of the fits
    notes: dict[str, Any] = field(default_factory=dict)
    # Real data (`--data`): None for the built-in shapes.
    data: "DataSpec | None" = None
    sweep_yaml: str = "configs/sweep/tiny.yaml"
    precompute_yaml: str = "configs/precompute/builtin.yaml"
    prompts: list[str] = field(default_factory=lambda: list(PROMPTS))  # text models: served + grid prompts
    labels: list[int] = field(default_factory=list)  # class models: served + grid labels
    classifier: dict[str, Any] = field(default_factory=dict)  # train_source_classifier keywords
    standard_fid: dict[str, Any] = field(default_factory=dict)  # n_samples, n_ref, steps, guidance of the champion


@dataclass
class DataSpec:
    """A real data set of the quickstart: what to fetch (or a user's path) and how it conditions."""

    name: str  # fashion-mnist | emoji | a user's path
    kind: str  # fashion-mnist | emoji | path
    conditioning: str  # class | text
    path: str | None = None  # a user's class-labelled source (folder of class sub-folders, or parquet with labels)
    source_kind: str = "parquet"
    limit: int | None = None  # images precomputed (the first N of the seeded shuffled order)
    num_classes: int | None = None  # a user's path: its classes (None: the set's own, 10 for Fashion-MNIST)


# The tiny runs' sweep: three small MM-DiTs (text data), four budgets, small batches and evaluations.
_TINY_TEXT_MODELS = 'models=["MMDiT-d1",{"depth":2,"hidden_size":96,"num_heads":2},"MMDiT-d2"]'
_TINY_SWEEP = [
    "budgets=[2e10,4e10,8e10,1.6e11]",
    "base.data.batch_size=16",
    "base.eval.num_samples=64",
    "base.eval.steps=4",
    "base.data.val_samples=32",
    "base.optim.warmup_steps=5",
]


def make_mode(tiny: bool) -> Mode:
    """The settings of the tiny or the full quickstart."""
    if tiny:
        # A smoke run of every stage: numbers are noisy, the plumbing is the same as the full run.
        return Mode(
            name="tiny",
            image_size=32,
            vae={
                "steps": 60,
                "batch_size": 16,
                "block_out_channels": [16, 16, 32],
                "scale_images": 128,
                "eval_images": 64,
            },
            features={"steps": 100, "batch_size": 32, "eval_images": 200},
            precompute=["source.count=256", "source.shard_size=128", "compute.batch_size=64"],
            # Batch 16 so that one step of the largest model (3.6e8 FLOPs/image) fits the smallest budget.
            sweep=[_TINY_TEXT_MODELS, *_TINY_SWEEP],
            serve_steps=8,
            grid_images=4,
            n_boot=50,
        )
    return Mode(
        name="full",
        image_size=32,
        vae={"steps": 600, "scale_images": 256, "eval_images": 128},
        features={"steps": 600, "eval_images": 500},
        precompute=["source.count=4096"],
        sweep=[],
        serve_steps=20,
        grid_images=8,
        n_boot=200,
    )


# The real-data grids: 4 sizes x 5 budgets over the built-in grid's 1.5 decades (WSD); every point scored with the
# data set's classifier features (128-d: 256 samples per point), the champion with the FID Inception.
_REAL_BUDGETS = "budgets=[1.5e11,4e11,1e12,2.4e12,5e12]"
_DIT_MODELS = (
    'models=[{"depth":1,"hidden_size":64,"num_heads":1},{"depth":2,"hidden_size":96,"num_heads":2},'
    '{"depth":2,"hidden_size":128,"num_heads":2},{"depth":3,"hidden_size":192,"num_heads":3}]'
)
# The grid file sets flip 0 for the built-in captions (they name sides); a mirrored garment or emoji keeps its class
# or name, so the real sets train on mirrored images too (DiT's augmentation).
_REAL_MIRRORING = "base.data.flip=0.5"
_REAL_SETTINGS = [
    "base.eval.num_samples=256",
    "base.eval.sampler=dpmpp-2m",
    "base.eval.steps=8",
    "base.eval.guidance=2.0",
    "base.eval.fractions=[]",
    "base.eval.num_actors=0",
    _REAL_MIRRORING,
    "base.data.batch_size=64",  # the real-data grids as measured (the built-in grid now trains at batch 32)
    "base.optim.ema_decay=0.999",  # and with EMA weights (the built-in grid now scores raw weights)
    "base.optim.lr=0.002",  # and at lr 2e-3 (the built-in grid now trains at 4e-3)
]


def make_data_mode(data: str, tiny: bool = False) -> Mode:
    """The mode of `ditscale quickstart --data fashion-mnist|emoji|PATH`."""
    if data == "fashion-mnist":
        spec = DataSpec(name=data, kind=data, conditioning="class", limit=8192)
    elif data == "emoji":
        spec = DataSpec(name=data, kind=data, conditioning="text")
    elif Path(data).exists():
        spec = _path_spec(Path(data))
    else:
        raise ValueError(f"--data {data!r}: not 'fashion-mnist', 'emoji' or an existing folder / parquet path")
    text = spec.conditioning == "text"
    sweep = [_REAL_BUDGETS, *_REAL_SETTINGS, *([] if text else [_DIT_MODELS])]
    mode = Mode(
        name=f"{spec.name.replace('/', '_').strip('_')}" + ("-tiny" if tiny else ""),
        image_size=32,
        vae={"steps": 600, "scale_images": 256, "eval_images": 128},
        features={},
        precompute=[f"source.limit={spec.limit}"] if spec.limit else [],
        sweep=sweep,
        serve_steps=20,
        grid_images=10 if not text else 8,
        n_boot=200,
        data=spec,
        sweep_yaml="configs/sweep/tiny.yaml",
        precompute_yaml=f"configs/precompute/{'emoji' if spec.kind == 'emoji' else 'fashion_mnist'}.yaml",
        prompts=[] if not text else ["grinning face", "red apple", "fox face", "rocket"],
        labels=list(range(min(10, spec.num_classes or 10))) if not text else [],
        classifier={"steps": 600, "width": 16, "batch_size": 128},
        # n_boot: bootstrap resamples of the champion's and the floor's intervals (a 95% interval from 10 was
        # little more than their range)
        standard_fid={"n_samples": 2048, "n_ref": 2048, "steps": 20, "guidance": 2.0, "n_boot": 50},
    )
    if tiny:  # plumbing only: every stage, small sizes
        mode.vae.update(steps=40, eval_images=32)
        mode.classifier.update(steps=40, limit=1024, test_limit=256)
        mode.precompute = ["source.limit=512"]
        mode.sweep = [
            *_TINY_SWEEP,
            _REAL_MIRRORING,
            *([] if text else [_DIT_MODELS.replace(',{"depth":3,"hidden_size":192,"num_heads":3}', "")]),
            *([] if not text else [_TINY_TEXT_MODELS]),
        ]
        mode.standard_fid.update(n_samples=64, n_ref=128, steps=4, n_boot=10)
        mode.serve_steps, mode.grid_images, mode.n_boot = 4, 4, 50
    return mode


_BUILTIN_NAMES = ("tiny", "full", "fashion-mnist", "emoji")  # the modes' own names


def _path_spec(path: Path) -> DataSpec:
    """A user's class-labelled source: a folder holding train/ and test/ (or val/) splits, each of class sub-folders
    or of parquet files with a `label` column (`ditscale data fetch` writes such a folder), or the train/ inside one.
    The data is named by the folder that holds the splits. Classes are counted as the precompute will read them."""
    from pipelines.infra.tracking import folder_name

    if path.is_file():
        raise ValueError(
            f"--data {str(path)!r}: a file; give a folder holding train/ and test/ (image class folders or parquet "
            "files with a `label` column), as `ditscale data fetch` writes"
        )
    # Absolute (the precompute's Ray workers may run elsewhere than this directory), links kept: a train/ that links
    # elsewhere still has its test/ beside the link.
    path = Path(os.path.abspath(path.expanduser()))
    if path.is_dir() and (path / "train").is_dir() and path.name != "train":
        path = path / "train"  # a `data fetch` output: the test/ beside it is the test split
    name = folder_name(path.parent.name if path.name == "train" and path.parent.name else path.name)
    if name.removesuffix("-tiny") in _BUILTIN_NAMES:  # its own sweep folder and experiment, not the built-in's
        name = f"{name}-data"
    if any(path.glob("*.parquet")):
        spec = DataSpec(name=name, kind="path", conditioning="class", path=str(path), source_kind="parquet")
        spec.num_classes = _parquet_classes(path)
    else:
        from pipelines.sources import SourceConfig, plan_source

        # The precompute's own rule (hidden, '_' and annotation-only folders are no class): the model gets the
        # classes the grids, the served labels and the classifier ask for.
        plan = plan_source(SourceConfig(kind="folder", path=str(path), labels_from_dirs=True), image_size=32)
        spec = DataSpec(name=name, kind="path", conditioning="class", path=str(path), source_kind="folder")
        spec.num_classes = len(plan.classes) if plan.classes else None
    if not spec.num_classes:
        raise ValueError(
            f"--data {str(path)!r}: no class labels (a parquet `label` column, or one sub-folder per class). "
            "PATH trains class-conditional models and scores them with a classifier trained on the labels; for "
            "captioned data run `ditscale precompute` and `ditscale sweep` with a text config (docs/precompute.md)"
        )
    # The standard FID's floor scores real test images: found here, not after the whole sweep (stages/realdata.py
    # looks for the same folders).
    if path.name != "train" or not any((path.parent / n).exists() for n in ("test", "val")):
        raise ValueError(
            f"--data {str(path)!r}: no test split beside it. Give a folder holding train/ and test/ (or val/), as "
            "`ditscale data fetch` writes, or the train/ inside one: the standard FID's floor scores the test images"
        )
    return spec


def _parquet_classes(path: Path) -> int | None:
    """1 + the largest label of the parquet files in `path` (labels as the precompute reads them: integers,
    integral floats or digit strings); None without labels. ValueError naming a file without a `label` column or
    a label that is not a class index."""
    import pyarrow.parquet as pq

    from pipelines.sources import _int_label

    files = sorted(path.glob("*.parquet"))
    unlabelled = [f for f in files if "label" not in set(pq.read_schema(f).names)]
    if len(unlabelled) == len(files):
        return None  # captions only, say: no class labels
    top = -1
    for f in files:
        if f in unlabelled:
            raise ValueError(
                f"--data {str(path)!r}: {f.name} has no `label` column (columns: "
                f"{', '.join(pq.read_schema(f).names)}); every parquet file of a class-labelled source needs one"
            )
        for v in pq.read_table(f, columns=["label"]).column("label").to_pylist():
            if v is None:
                continue
            label = _int_label(v)
            if label is None or label < 0:
                raise ValueError(f"--data {str(path)!r}: {f.name}: label {v!r} is not a class index (0, 1, 2, ...)")
            top = max(top, label)
    return top + 1 if top >= 0 else None


# Keys of the sweep config the quickstart sets itself (where the sweep lands, its data, its MLflow store).
_OWN_SWEEP_KEYS = (
    "name",
    "output",
    "base_config",
    "mlflow",
    "base.mlflow",
    "base.data.manifest",
    "base.eval.classifier",
)


def with_sweep_overrides(mode: Mode, overrides: list[str]) -> Mode:
    """`mode` with `ditscale quickstart --sweep-set KEY=VALUE` overrides of its sweep config after its own, checked
    against the sweep config's keys; ValueError naming a bad one (nothing has run yet)."""
    if not overrides:
        return mode
    from dataclasses import replace

    from ditcore.config import ConfigError
    from jobs.quickstart.stages.scaling import TRAIN_YAML
    from jobs.sweep.driver import load_sweep_config
    from jobs.sweep.grid import expand_grid
    from pipelines.infra.config_files import REPO_ROOT

    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if "=" not in item or not key:
            raise ValueError(f"--sweep-set {item!r}: expected KEY=VALUE, e.g. base.eval.guidance=3")
        if any(key == own or key.startswith(own + ".") for own in _OWN_SWEEP_KEYS):
            raise ValueError(
                f"--sweep-set {item!r}: the quickstart sets {key} itself (its output folder, data and MLflow store); "
                "run `ditscale sweep` for a sweep of your own"
            )
        inside = [own for own in _OWN_SWEEP_KEYS if own.startswith(key + ".")]
        if inside:  # a whole mapping replaces the quickstart's own keys in it
            raise ValueError(
                f"--sweep-set {item!r}: {key} holds {', '.join(inside)}, which the quickstart sets itself; set the "
                f"keys under it one by one, e.g. {key}.<key>=VALUE"
            )
    out = replace(mode, sweep=[*mode.sweep, *overrides])
    from jobs.train.plan import check_settings

    try:
        trials = expand_grid(
            load_sweep_config(str(REPO_ROOT / out.sweep_yaml), [f"base_config={TRAIN_YAML}", *out.sweep])
        )
        for trial in trials:  # values too (a negative lr), not only keys and types: before any stage runs
            check_settings(trial.train)
    except ConfigError as e:
        raise ValueError(f"--sweep-set: {e}") from e
    return out
