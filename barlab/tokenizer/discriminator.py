"""PatchGAN discriminator trained from scratch, and the hinge GAN losses.

The paper uses a frozen DINO ViT-S/8 with trainable heads; that needs downloaded weights, so this
is the classic pix2pix/taming PatchGAN instead.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from barlab.utils.integers import check_int


class PatchDiscriminator(nn.Module):
    """PatchGAN: image (B, C, H, W) -> patch logits (B, 1, H', W').

    ``n_layers`` stride-2 4x4 convs (channels ``width * min(2^i, 8)``), one stride-1 4x4 conv, then a
    stride-1 4x4 conv to one logit per patch. Each conv but the first and last is followed by
    BatchNorm (or, with ``spectral_norm=True``, every conv is spectrally normalised and there is no
    BatchNorm) and LeakyReLU(0.2). For 32x32 inputs and n_layers=3: (B, 1, 2, 2); 256x256: (B, 1, 30, 30).

    Args:
        in_channels: image channels.
        width: channels of the first conv; knob ``tokenizer.discriminator.width``.
        n_layers: number of stride-2 convs; knob ``tokenizer.discriminator.n_layers``.
        spectral_norm: spectral normalisation instead of BatchNorm.
    """

    def __init__(self, in_channels: int, width: int = 64, n_layers: int = 3, spectral_norm: bool = False):
        super().__init__()
        in_channels = check_int(in_channels, "in_channels", fix="in_channels=1")
        width = check_int(width, "width", fix="width=64")
        n_layers = check_int(n_layers, "n_layers", fix="n_layers=3")
        sn = _spectral_norm if spectral_norm else (lambda m: m)

        def norm(c: int) -> nn.Module:
            return nn.Identity() if spectral_norm else nn.BatchNorm2d(c)

        layers: list[nn.Module] = [sn(nn.Conv2d(in_channels, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        c = width
        for i in range(1, n_layers + 1):
            c_next = width * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [sn(nn.Conv2d(c, c_next, 4, stride=stride, padding=1, bias=spectral_norm)), norm(c_next),
                       nn.LeakyReLU(0.2)]
            c = c_next
        layers.append(sn(nn.Conv2d(c, 1, 4, stride=1, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) in [-1, 1] -> logits (B, 1, H', W')."""
        return self.net(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss ``0.5 * (mean relu(1 - real) + mean relu(1 + fake))``, scalar."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator hinge loss ``-mean(fake)``, scalar."""
    return -logits_fake.float().mean()
