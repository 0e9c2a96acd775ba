"""The Lightning wiring of the plain modules: the only package besides ``pipeline`` that trains.

- ``tokenizer_module``: trains a tokenizer (reconstruction, perceptual and GAN losses, two optimisers).
- ``generator_module``: trains a BAR generator (AR backbone + prediction head over bit tokens).
- ``optim``: weight-decay parameter groups and parameter counts.
- ``callbacks/``: EMA, progress lines, reconstruction and sample grids, pre-emption, finite-loss guard,
  RNG state in checkpoints.
"""
