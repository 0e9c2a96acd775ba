"""Random stand-ins for the paper tokenizer's pretrained files, in the formats users download.

For measuring the paper tokenizer (FLOPs, step time, memory) and for tests, where the real files are
neither needed nor available. ``write_stand_ins(folder, sizes)`` writes, with random weights and the
real key names:

- ``siglip2/``: a Hugging Face model folder (``config.json`` with a ``vision_config``, and
  ``model.safetensors`` holding ``vision_model.*`` plus a text-tower key the loader must skip);
- ``vgg16.pth``: a torchvision VGG16 state dict (``features.N.*``; VGG16 has no size knob);
- ``lpips.pth``: the five LPIPS linear layers (``lin{i}.model.1.weight``);
- ``convnext_s.pth``: a torchvision-layout ConvNeXt (``features.*``, ``classifier.*``);
- ``dino.pth``: a DINO ViT (``cls_token``, ``pos_embed``, ``patch_embed.*``, ``blocks.N.*``, ``norm.*``).

The returned ``{name: path}`` is keyed as the ``tokenizer.pretrained`` node.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from barlab.tokenizer.convnext import ConvNeXt
from barlab.tokenizer.dino_discriminator import FrozenDinoViT
from barlab.tokenizer.lpips import LPIPS_CHANNELS
from barlab.tokenizer.perceptual import vgg16_features
from barlab.tokenizer.siglip2 import SigLIP2Tower

# the published parts' sizes
FULL_SIZES = {
    "siglip2": {"patch_size": 16, "width": 1152, "depth": 27, "heads": 16, "mlp_dim": 4304, "num_patches": 256},
    "convnext_s": {"dims": [96, 192, 384, 768], "depths": [3, 3, 27, 3]},
    "dino": {"img_size": 224, "patch_size": 8, "embed_dim": 384, "depth": 12, "num_heads": 6,
             "key_depths": [2, 5, 8, 11]},
}

# tiny sizes, and the overrides that size ``tokenizer=bar_fsq_paper`` to them (32 px RGB images, 4x4
# tokens of 8 bits): seconds on a CPU, every part and loss term kept
TINY_SIZES = {
    "siglip2": {"patch_size": 8, "width": 32, "depth": 2, "heads": 2, "mlp_dim": 64, "num_patches": 16},
    "convnext_s": {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
    "dino": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2, "key_depths": [0, 2]},
}
TINY_OVERRIDES = [
    "tokenizer=bar_fsq_paper", "data=synthetic", "data.image_size=32", "data.batch_size=8",
    "tokenizer.bits=8", "tokenizer.global_batch_size=null",
    f"tokenizer.latent_channels={TINY_SIZES['siglip2']['width']}",   # the encoder's width
    *(f"tokenizer.encoder.{k}={v}" for k, v in TINY_SIZES["siglip2"].items() if k != "width"),
    "tokenizer.decoder.width=32", "tokenizer.decoder.depth=2", "tokenizer.decoder.heads=2",
    "tokenizer.decoder.distill_hidden=32", "tokenizer.decoder.distill_layer=0",
    "tokenizer.loss.perceptual.net.convnext_dims=[8,16,32,64]",
    "tokenizer.loss.perceptual.net.convnext_depths=[1,1,1,1]",
    "tokenizer.loss.perceptual.net.resize=32", "tokenizer.loss.gram.net.resize=32",
    *(f"tokenizer.loss.gan.discriminator.{k}={v}".replace(" ", "") for k, v in TINY_SIZES["dino"].items()),
    "tokenizer.loss.gan.discriminator.kernel_size=3",
]


def write_stand_ins(folder: Path, sizes: dict = FULL_SIZES, seed: int = 0) -> dict[str, Path]:
    """Write the five files under ``folder`` at ``sizes`` (as :data:`FULL_SIZES`); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    paths = {name: folder / file for name, file in
             (("siglip2", "siglip2"), ("vgg16", "vgg16.pth"), ("lpips", "lpips.pth"),
              ("convnext_s", "convnext_s.pth"), ("dino", "dino.pth"))}

    siglip = sizes["siglip2"]
    tower = SigLIP2Tower(in_channels=3, **siglip)
    state = {f"vision_model.{k}": v.contiguous() for k, v in tower.state_dict().items()}
    state["text_model.embeddings.token_embedding.weight"] = torch.randn(8, 4)
    paths["siglip2"].mkdir(exist_ok=True)
    save_file(state, str(paths["siglip2"] / "model.safetensors"))
    vision = {"hidden_size": siglip["width"], "intermediate_size": siglip["mlp_dim"],
              "num_hidden_layers": siglip["depth"], "num_attention_heads": siglip["heads"],
              "patch_size": siglip["patch_size"], "num_patches": siglip["num_patches"], "num_channels": 3,
              "layer_norm_eps": 1e-6}
    (paths["siglip2"] / "config.json").write_text(json.dumps({"model_type": "siglip2", "vision_config": vision}))

    torch.save({f"features.{k}": v for k, v in vgg16_features().state_dict().items()}, paths["vgg16"])
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) * 0.1 for i, c in enumerate(LPIPS_CHANNELS)},
               paths["lpips"])
    convnext = sizes["convnext_s"]
    torch.save(ConvNeXt(dims=tuple(convnext["dims"]), depths=tuple(convnext["depths"])).state_dict(),
               paths["convnext_s"])
    dino = sizes["dino"]
    torch.save(FrozenDinoViT(**{**dino, "key_depths": tuple(dino["key_depths"])}).state_dict(), paths["dino"])
    return paths


def pretrained_overrides(paths: dict[str, Path]) -> list[str]:
    """``tokenizer.pretrained.<name>=<path>`` for every file of :func:`write_stand_ins`."""
    return [f"tokenizer.pretrained.{name}={path}" for name, path in paths.items()]
