"""Generator heads: per-token condition -> k' bits (linear softmax, bitwise, masked bit modeling)."""

from barlab.generator.heads.allocation import check_allocation, cosine_allocation
from barlab.generator.heads.base import Head, HeadOutput
from barlab.generator.heads.bitwise import BitwiseHead, bitwise_head_params
from barlab.generator.heads.diffusion import DiffusionHead
from barlab.generator.heads.linear import LinearHead, linear_head_memory, linear_head_params
from barlab.generator.heads.mbm import MBMHead

__all__ = ["BitwiseHead", "DiffusionHead", "Head", "HeadOutput", "LinearHead", "MBMHead", "bitwise_head_params",
           "check_allocation", "cosine_allocation", "linear_head_memory", "linear_head_params"]
