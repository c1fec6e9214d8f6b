"""FID feature networks: the Inception-v3 FID network and a small attribute network for the built-in data set.

Both take images as either uint8 [B,H,W,3] (numpy or torch, channels last) or float [B,3,H,W] in [-1, 1]
(the VAE / `images_to_tensor` convention) and expose `.features(images) -> [B, F]` and `.feature_dim`.

Inception-v3: the TF "2015-12-05" graph ported by pytorch-fid ("FIDInceptionA/C/E": average pools that
ignore padding, a max pool in the last block), implemented here without torchvision. The state-dict key
names match pytorch-fid's `pt_inception-2015-12-05-*.pth`, so that file (or a safetensors copy) loads directly.
Preprocessing matches pytorch-fid: [0,1] input, bilinear resize to 299x299, then x*2-1.

Attribute net ("builtin-attr"): a small CNN trained on `ditcore.data.builtin`. Its penultimate layer gives
FID features on the built-in data; its heads predict, for each of the 9 grid cells, the shape (or "absent"),
colour and size of the object there. Per-cell heads (rather than "first object" heads) are used because the
caption order of two objects is not visible in the image; the objects of a caption are read off the cells
at their positions, so `.attributes` answers shape/colour/size/position for every object of an image.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INCEPTION_ARCH = "inception-v3-fid"
ATTR_ARCH = "builtin-attr"
ATTRIBUTES = ("shape", "colour", "size", "position")
NUM_CELLS = 9  # 3x3 position grid of the built-in data set
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------- inputs

def images_to_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B,H,W,3] -> float [B,3,H,W] in [0,1] (x/255, as torchvision's ToTensor); float [B,3,H,W] in [-1,1] -> [0,1]."""
    x = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images with 4 dims, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)  # [B,3,H,W]
        elif x.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B,H,W,3] or [B,3,H,W], got shape {tuple(x.shape)}")
        return x.float().div(255.0)
    if not torch.is_floating_point(x):
        raise ValueError(f"expected uint8 or float images, got dtype {x.dtype}")
    if x.shape[1] != 3:
        raise ValueError(f"expected float images [B,3,H,W] in [-1,1], got shape {tuple(x.shape)}")
    return x.float().add(1.0).mul(0.5).clamp(0.0, 1.0)


def _module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# ------------------------------------------------------------------------------------- Inception-v3 FID

class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm(eps=1e-3) + ReLU, the unit of Inception-v3."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))  # [B,C_out,H',W']


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3/1 average pool that, like TensorFlow's, excludes the zero padding from the mean (FID patch)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """Inception block A (35x35) with the TF-style average pool."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)  # [B,64,H,W]
        b5 = self.branch5x5_2(self.branch5x5_1(x))  # [B,64,H,W]
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))  # [B,96,H,W]
        bp = self.branch_pool(_tf_avg_pool(x))  # [B,pool_features,H,W]
        return torch.cat([b1, b5, b3, bp], 1)  # [B,224+pool_features,H,W]


class InceptionB(nn.Module):
    """Grid reduction 35x35 -> 17x17."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)  # [B,384,H/2,W/2]
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))  # [B,96,H/2,W/2]
        bp = F.max_pool2d(x, kernel_size=3, stride=2)  # [B,C_in,H/2,W/2]
        return torch.cat([b3, bd, bp], 1)  # [B,480+C_in,H/2,W/2]


class FIDInceptionC(nn.Module):
    """Inception block C (17x17, factorised 7x7) with the TF-style average pool."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)  # [B,192,H,W]
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))  # [B,192,H,W]
        bd = self.branch7x7dbl_1(x)  # [B,c7,H,W]
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(bd))))  # [B,192,H,W]
        bp = self.branch_pool(_tf_avg_pool(x))  # [B,192,H,W]
        return torch.cat([b1, b7, bd, bp], 1)  # [B,768,H,W]


class InceptionD(nn.Module):
    """Grid reduction 17x17 -> 8x8."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))  # [B,320,H/2,W/2]
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))  # [B,192,H/2,W/2]
        bp = F.max_pool2d(x, kernel_size=3, stride=2)  # [B,C_in,H/2,W/2]
        return torch.cat([b3, b7, bp], 1)  # [B,512+C_in,H/2,W/2]


class FIDInceptionE(nn.Module):
    """Inception block E (8x8); the FID graph pools with 'avg' (TF-style) in Mixed_7b and 'max' in Mixed_7c."""

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)  # [B,320,H,W]
        b3 = self.branch3x3_1(x)  # [B,384,H,W]
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)  # [B,768,H,W]
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))  # [B,384,H,W]
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)  # [B,768,H,W]
        # The FID graph's last block max-pools here (a quirk of the TF release that FID numbers depend on).
        pooled = _tf_avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        bp = self.branch_pool(pooled)  # [B,192,H,W]
        return torch.cat([b1, b3, bd, bp], 1)  # [B,2048,H,W]


class FIDInceptionV3(nn.Module):
    """Inception-v3 as used for FID (pytorch-fid's FID variant); `.features` gives the 2048-d pool features."""

    feature_dim = 2048

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        # The 1008-way classifier is unused for FID but is part of the released state dict.
        self.fc = nn.Linear(2048, 1008)
        self.eval()

    @property
    def config(self) -> dict:
        """The config.json content that rebuilds this network."""
        return {"arch": INCEPTION_ARCH, "feature_dim": self.feature_dim}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [B,3,H,W] in [0,1] -> pool features [B,2048] (resize + normalisation as pytorch-fid)."""
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)  # [B,3,299,299]
        x = 2 * x - 1  # [B,3,299,299] in [-1,1], the range the TF graph expects
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [B,64,147,147]
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # [B,64,73,73]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # [B,192,71,71]
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # [B,192,35,35]
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # [B,288,35,35]
        x = self.Mixed_6a(x)  # [B,768,17,17]
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # [B,768,17,17]
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # [B,2048,8,8]
        return x.mean(dim=(2, 3))  # [B,2048] adaptive average pool to 1x1

    @torch.no_grad()
    def features(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B,H,W,3] or float [B,3,H,W] in [-1,1] -> float32 [B,2048] on CPU."""
        x = images_to_unit(images).to(_module_device(self))  # [B,3,H,W] in [0,1]
        return self.forward(x).float().cpu()


# ------------------------------------------------------------------------------- built-in attribute net

def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


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
        self.trunk = nn.Sequential(
            _conv_bn(3, w), _conv_bn(w, w),
            _conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w), _conv_bn(2 * w, 4 * w),
        )
        self.cell = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU(), nn.Linear(4 * w, cell_dim), nn.ReLU())
        self.shape_head = nn.Linear(cell_dim, num_shapes + 1)  # last class = no object in the cell
        self.colour_head = nn.Linear(cell_dim, num_colours)
        self.size_head = nn.Linear(cell_dim, num_sizes)
        self.eval()

    @property
    def config(self) -> dict:
        """The config.json content that rebuilds this network."""
        return {
            "arch": ATTR_ARCH, "image_size": self.image_size, "width": self.width, "cell_dim": self.cell_dim,
            "feature_dim": self.feature_dim, "num_shapes": self.num_shapes, "num_colours": self.num_colours,
            "num_sizes": self.num_sizes,
        }

    @property
    def absent_class(self) -> int:
        """Index of the 'no object in this cell' class of the shape logits."""
        return self.num_shapes

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: float [B,3,H,W] in [0,1] -> (features [B,9*cell_dim], {"shape": [B,9,S+1], "colour": [B,9,C], "size": [B,9,Z]})."""
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
        logits = net.attributes(images[start:start + batch_size])
        pred = {k: v.argmax(-1).numpy() for k, v in logits.items()}  # each [b,9]
        obj = objects[start:start + batch_size]
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
        out.append([
            {"shape": int(pred["shape"][i, c]), "colour": int(pred["colour"][i, c]),
             "size": int(pred["size"][i, c]), "position": c}
            for c in range(NUM_CELLS) if int(pred["shape"][i, c]) != net.absent_class
        ])
    return out


# --------------------------------------------------------------------------------------- save / load

def _build(config: dict, where: str) -> nn.Module:
    arch = config.get("arch")
    if arch == INCEPTION_ARCH:
        return FIDInceptionV3()
    if arch == ATTR_ARCH:
        keys = ("image_size", "width", "cell_dim", "num_shapes", "num_colours", "num_sizes")
        unknown = sorted(set(config) - set(keys) - {"arch", "feature_dim"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} for arch {ATTR_ARCH!r}")
        return BuiltinAttributeNet(**{k: int(config[k]) for k in keys if k in config})
    raise ValueError(f"{where}: unknown feature net arch {arch!r} (expected {INCEPTION_ARCH!r} or {ATTR_ARCH!r})")


def _load_state(net: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Strict load that tolerates missing BatchNorm `num_batches_tracked` (absent in the ported 2015 weights)."""
    own = net.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    bad_shape = [f"{k}: {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        raise ValueError(
            f"{where}: weights do not match the {type(net).__name__} architecture: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)}), "
            f"wrong shape {bad_shape[:5]}"
        )
    net.load_state_dict(state, strict=False)


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    if file.suffix in (".pth", ".pt", ".bin"):
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
    net = FIDInceptionV3()
    _load_state(net, _read_weights(p), str(p))
    return net.eval()


def load_feature_net(path: str | os.PathLike) -> nn.Module:
    """Load a feature net: a directory with model.safetensors + config.json, or an Inception weights file."""
    p = Path(path)
    if p.is_file():
        return load_inception(p)
    if not p.is_dir():
        raise FileNotFoundError(f"feature net not found: {p} (expected a directory with model.safetensors + config.json)")
    cfg_file, weights = p / "config.json", p / "model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise FileNotFoundError(f"feature net directory {p} has no {f.name}")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_file}: invalid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_file}: expected a JSON object")
    config.pop("meta", None)  # free-form metadata (e.g. training accuracies), not needed to rebuild
    if config.get("arch") == INCEPTION_ARCH:
        config.pop("feature_dim", None)  # informational; the architecture fixes it
    net = _build(config, str(cfg_file))
    _load_state(net, _read_weights(weights), str(weights))
    return net.eval()


def save_feature_net(net: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write `net` as a directory: model.safetensors + config.json (+ optional "meta" dict, e.g. accuracies)."""
    from safetensors.torch import save_file

    if not hasattr(net, "config"):
        raise TypeError(f"{type(net).__name__} is not a feature net (no .config)")
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    config = dict(net.config)
    if metadata:
        config["meta"] = metadata
    # Write to temporary names then rename, so a reader never sees a half-written file.
    save_file(state, str(p / "model.safetensors.tmp"))
    os.replace(p / "model.safetensors.tmp", p / "model.safetensors")
    (p / "config.json.tmp").write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(p / "config.json.tmp", p / "config.json")
    return p
