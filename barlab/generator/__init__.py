"""Generator: the causal AR context model over bit tokens, its heads, token shuffling, RAR orders
and the sampler. All are plain ``nn.Module``s / functions; training wrappers live elsewhere.
"""

from barlab.generator.attention import Attention
from barlab.generator.backbone import ARBackbone
from barlab.generator.embeddings import BitEmbedding, ClassPrefix, PositionEmbedding
from barlab.generator.guidance import guidance_scale
from barlab.generator.heads import (
                                    BitwiseHead,
                                    DiffusionHead,
                                    Head,
                                    HeadOutput,
                                    LinearHead,
                                    MBMHead,
                                    cosine_allocation,
                                    linear_head_params,
)
from barlab.generator.kv_cache import KVCache
from barlab.generator.official_checkpoint import official_generator_to_barlab, read_official_geometry
from barlab.generator.order import random_ratio, sample_orders
from barlab.generator.rope import Rope2D, Rotation
from barlab.generator.sampler import ARSampler
from barlab.generator.token_shuffle import shuffle, unshuffle
from barlab.generator.transformer_block import Block

__all__ = [
    "ARBackbone",
    "ARSampler",
    "Attention",
    "BitEmbedding",
    "BitwiseHead",
    "Block",
    "ClassPrefix",
    "DiffusionHead",
    "Head",
    "HeadOutput",
    "KVCache",
    "LinearHead",
    "MBMHead",
    "PositionEmbedding",
    "Rope2D",
    "Rotation",
    "cosine_allocation",
    "guidance_scale",
    "linear_head_params",
    "official_generator_to_barlab",
    "random_ratio",
    "read_official_geometry",
    "sample_orders",
    "shuffle",
    "unshuffle",
]
