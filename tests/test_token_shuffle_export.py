"""Token shuffling p = 2 and p = 4 end to end, on a non-square token grid (4 x 8, so a transposed grid fails):

- shuffle / unshuffle put every token where the documented pixel-unshuffle layout says;
- a tiny generator with p = 2 or 4 written as ``generator.pt`` (``save_generator``, what the generator stage
  exports), loaded back (``load_generator``) and sampled gives the same token grid, bit for bit, at the same
  seed; and the grid handed to the tokenizer is the AR steps unshuffled token by token.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from hydra.utils import instantiate
from omegaconf import OmegaConf

from barlab.generator.image_generator import ImageGenerator, load_generator, save_generator
from barlab.generator.token_shuffle import shuffle, unshuffle
from barlab.tokenizer.checkpoint import build_tokenizer, save_tokenizer

GRID, K, CLASSES = (4, 8), 3, 3
SAMPLING = {"guidance": 2.0, "schedule": "linear", "power": 1.0, "temperature": 1.0, "allocation": None}
BACKBONE = {"_target_": "barlab.generator.ARBackbone", "width": 16, "depth": 1, "heads": 2, "cond_dim": 16,
            "class_repeat": 1}
HEAD = {"_target_": "barlab.generator.MBMHead", "width": 16, "depth": 1, "steps": 2, "fourier_dim": 8}
TOKENIZER = {
    "encoder": {"_target_": "barlab.tokenizer.ConvEncoder", "in_channels": 1, "width": 8, "depth": 1,
                "downsample": 4, "out_channels": 8},
    "quantizer": {"_target_": "barlab.tokenizer.BinaryFSQ", "latent_channels": 8, "bits": K},
    "decoder": {"_target_": "barlab.tokenizer.ConvDecoder", "out_channels": 1, "width": 8, "depth": 1,
                "upsample": 4, "in_channels": 8},
}


def indexed_bits(grid: tuple[int, int], k: int) -> torch.Tensor:
    """(1, H·W, k) float: token t carries the value t + 1 in each of its k slots, times (slot + 1) / 10."""
    tokens = torch.arange(grid[0] * grid[1], dtype=torch.float64) + 1
    return (tokens[:, None] * (1 + torch.arange(k) / 10))[None]


def unshuffle_by_hand(steps: torch.Tensor, grid: tuple[int, int], p: int, k: int) -> torch.Tensor:
    """Step (i, j) holds tokens (p·i + a, p·j + b), a-major, each with its k bits contiguous."""
    height, width = grid
    out = torch.empty(steps.shape[0], height * width, k, dtype=steps.dtype)
    for r in range(height):
        for c in range(width):
            step = (r // p) * (width // p) + c // p
            sub = (r % p) * p + c % p
            out[:, r * width + c] = steps[:, step, sub * k:(sub + 1) * k]
    return out


@pytest.mark.parametrize("p", [1, 2, 4])
def test_shuffle_is_a_pixel_unshuffle_with_the_bits_innermost(p):
    bits = indexed_bits(GRID, K)
    merged = shuffle(bits, GRID, p)
    assert merged.shape == (1, GRID[0] * GRID[1] // p**2, K * p * p)
    # torch's pixel_unshuffle on the (k, H, W) image orders channels (k, sh, sw); barlab's layout is (sh, sw, k)
    image = rearrange(bits, "b (h w) k -> b k h w", h=GRID[0])
    torch_layout = F.pixel_unshuffle(image, p)
    assert torch.equal(merged, rearrange(torch_layout, "b (k s) h w -> b (h w) (s k)", k=K))
    assert torch.equal(unshuffle_by_hand(merged, GRID, p, K), bits)
    assert torch.equal(unshuffle(merged, GRID, p), bits)


@pytest.mark.parametrize("p", [2, 4])
def test_unshuffle_puts_each_sub_token_at_its_grid_cell(p):
    """Known steps: the value at step s, sub-token u, bit q is 100·s + 10·u + q. Token (r, c) must hold
    100·((r // p)·(W / p) + c // p) + 10·((r % p)·p + c % p) + q."""
    steps_n, k = (GRID[0] // p) * (GRID[1] // p), 2
    s = torch.arange(steps_n)[:, None, None]
    u = torch.arange(p * p)[None, :, None]
    q = torch.arange(k)[None, None, :]
    steps = (100 * s + 10 * u + q).reshape(1, steps_n, p * p * k).float()
    tokens = unshuffle(steps, GRID, p)
    width = GRID[1]
    for r in range(GRID[0]):
        for c in range(width):
            want = [100 * ((r // p) * (width // p) + c // p) + 10 * ((r % p) * p + c % p) + b for b in range(k)]
            assert tokens[0, r * width + c].tolist() == want, (r, c)
    assert torch.equal(shuffle(tokens, GRID, p), steps)


def write_tokenizer(tmp_path) -> tuple:
    torch.manual_seed(0)
    tokenizer = build_tokenizer(TOKENIZER)
    path = save_tokenizer(tmp_path / "tokenizer.pt", OmegaConf.create(TOKENIZER), tokenizer.state_dict(), 16, 1,
                          extra={"bits_per_token": K, "grid": list(GRID), "is_discrete": True})
    return path, tokenizer.eval()


def randomized(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (the zero-initialised adaLN gates too), so every weight reaches the samples."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return module.eval()


def decoded_bits(model: ImageGenerator, labels: torch.Tensor, seed: int, monkeypatch) -> tuple:
    """``model.generate`` at ``seed``: (the bits handed to the tokenizer, the grid, the images)."""
    seen = []
    real = model.tokenizer.decode_bits

    def spy(bits, grid):
        seen.append((bits.clone(), tuple(grid)))
        return real(bits, grid)

    monkeypatch.setattr(model.tokenizer, "decode_bits", spy)
    images = model.generate(labels, generator=torch.Generator().manual_seed(seed))
    (bits, grid), = seen
    return bits, grid, images


@pytest.mark.parametrize("p", [2, 4])
def test_generator_file_with_token_shuffle_reloads_and_samples_the_same_token_grid(p, tmp_path, monkeypatch):
    tok_file, tokenizer = write_tokenizer(tmp_path)
    bits_per_step, ar_grid = K * p * p, (GRID[0] // p, GRID[1] // p)
    torch.manual_seed(1)
    backbone = randomized(instantiate(BACKBONE, bits_per_step=bits_per_step, grid=ar_grid, num_classes=CLASSES), 2)
    head = randomized(instantiate(HEAD, cond_dim=16, bits_per_step=bits_per_step), 3)
    before = ImageGenerator(backbone, head, tokenizer, GRID, p, SAMPLING).eval()
    labels = torch.tensor([0, 2, 1, 0])
    bits_before, grid_before, images_before = decoded_bits(before, labels, 7, monkeypatch)

    path = save_generator(tmp_path / "generator.pt", BACKBONE, HEAD, backbone, head, tok_file, grid=GRID,
                          token_shuffle=p, num_classes=CLASSES, sampling=SAMPLING)
    after, info = load_generator(tmp_path)
    assert path == tmp_path / "generator.pt"
    assert info["token_shuffle"] == p and info["grid"] == list(GRID) and info["bits_per_step"] == bits_per_step
    assert after.backbone.grid == ar_grid and after.backbone.seq_len == ar_grid[0] * ar_grid[1]
    bits_after, grid_after, images_after = decoded_bits(after, labels, 7, monkeypatch)

    assert grid_before == grid_after == GRID
    assert bits_after.shape == (4, GRID[0] * GRID[1], K) and set(bits_after.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(bits_after, bits_before)                     # bit-identical after the round trip
    assert torch.equal(images_after, images_before) and images_after.shape == (4, 1, 16, 32)
    # the grid the tokenizer decodes is the sampled AR steps, unshuffled token by token
    steps = after.sampler.sample(labels.clone(), guidance=2.0, schedule="linear", power=1.0, temperature=1.0,
                                 generator=torch.Generator().manual_seed(7))
    assert steps.shape == (4, ar_grid[0] * ar_grid[1], bits_per_step)
    assert torch.equal(bits_after, unshuffle_by_hand(steps, GRID, p, K))
    # another seed samples another grid (the comparison above is not vacuous)
    assert not torch.equal(decoded_bits(after, labels, 8, monkeypatch)[0], bits_after)
