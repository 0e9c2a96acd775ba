"""Tokenizer bottlenecks behind one interface (``Quantizer`` -> ``QuantizerOutput``)."""

from barlab.tokenizer.quantizers.base import Quantizer, QuantizerOutput
from barlab.tokenizer.quantizers.binary_fsq import BinaryFSQ
from barlab.tokenizer.quantizers.fsq import FSQ
from barlab.tokenizer.quantizers.kl import KLLatent

__all__ = ["BinaryFSQ", "FSQ", "KLLatent", "Quantizer", "QuantizerOutput"]
