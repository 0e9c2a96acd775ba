"""Tokenizer components: encoder/decoder, quantizers, losses, discriminator, bit statistics.

All are plain ``nn.Module``s / functions; the Lightning wrapper lives in ``barlab.training``.
"""

from barlab.tokenizer.autoencoder import ConvDecoder, ConvEncoder, ResBlock
from barlab.tokenizer.bit_stats import BitStatsAccumulator, binary_entropy, bit_statistics
from barlab.tokenizer.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from barlab.tokenizer.losses import ReconstructionLoss
from barlab.tokenizer.perceptual import VGGPerceptualLoss
from barlab.tokenizer.quantizers import FSQ, BinaryFSQ, KLLatent, Quantizer, QuantizerOutput
from barlab.tokenizer.tokenizer import Tokenizer

__all__ = [
    "BinaryFSQ",
    "BitStatsAccumulator",
    "ConvDecoder",
    "ConvEncoder",
    "FSQ",
    "KLLatent",
    "PatchDiscriminator",
    "Quantizer",
    "QuantizerOutput",
    "ReconstructionLoss",
    "ResBlock",
    "Tokenizer",
    "VGGPerceptualLoss",
    "binary_entropy",
    "bit_statistics",
    "hinge_d_loss",
    "hinge_g_loss",
]
