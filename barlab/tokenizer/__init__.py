"""Tokenizer components: encoder/decoder, quantizers, losses, discriminator, bit statistics.

All are plain ``nn.Module``s / functions; the Lightning wrapper lives in ``barlab.training``.
"""

from barlab.tokenizer.autoencoder import ConvDecoder, ConvEncoder, ResBlock
from barlab.tokenizer.bit_stats import BitStatsAccumulator, binary_entropy, bit_statistics
from barlab.tokenizer.convnext import ConvNeXt, load_convnext
from barlab.tokenizer.dino_discriminator import (
    BatchNormLocal,
    DinoDiscriminator,
    FrozenDinoViT,
    discriminator_fake_input,
)
from barlab.tokenizer.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from barlab.tokenizer.gram import GramLoss
from barlab.tokenizer.losses import ReconstructionLoss
from barlab.tokenizer.lpips import LPIPS
from barlab.tokenizer.paper_perceptual import PaperPerceptualLoss
from barlab.tokenizer.perceptual import VGGPerceptualLoss
from barlab.tokenizer.quantizers import FSQ, BinaryFSQ, KLLatent, Quantizer, QuantizerOutput
from barlab.tokenizer.siglip2 import SigLIP2Encoder, SigLIP2Teacher, SigLIP2Tower
from barlab.tokenizer.tokenizer import Tokenizer
from barlab.tokenizer.vit_decoder import ViTDecoder

__all__ = [
    "BatchNormLocal",
    "BinaryFSQ",
    "BitStatsAccumulator",
    "ConvDecoder",
    "ConvEncoder",
    "ConvNeXt",
    "DinoDiscriminator",
    "FSQ",
    "FrozenDinoViT",
    "GramLoss",
    "KLLatent",
    "LPIPS",
    "PaperPerceptualLoss",
    "PatchDiscriminator",
    "Quantizer",
    "QuantizerOutput",
    "ReconstructionLoss",
    "ResBlock",
    "SigLIP2Encoder",
    "SigLIP2Teacher",
    "SigLIP2Tower",
    "Tokenizer",
    "VGGPerceptualLoss",
    "ViTDecoder",
    "binary_entropy",
    "bit_statistics",
    "discriminator_fake_input",
    "hinge_d_loss",
    "hinge_g_loss",
    "load_convnext",
]
