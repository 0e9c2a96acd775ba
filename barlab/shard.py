"""CLI: write a source as WebDataset shards.

    python -m barlab.shard fashion-mnist --out /data/fm_shards [--idx-dir DIR]
    python -m barlab.shard imagefolder --root /data/imagenet/train --val-root ... --max-size 64 --out DIR
    python -m barlab.shard synthetic --num-train 512 --num-val 128 --out DIR
    ... --workers 4    # write shards in 4 processes (the same shards as with 1)

An existing finished folder is kept unless ``--force``. An interrupted run leaves its finished shards in
``.OUT.partial`` beside OUT; the same command again writes only the missing ones. Errors print one
``error: ...`` line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from barlab.errors import BarlabError

# a source's arguments, named in errors as the knobs of the config's data.source node
SOURCE_KNOBS = {name: f"data.source.{name}" for name in ("idx_dir", "root", "val_root", "val_fraction", "max_size",
                                                          "num_train", "num_val", "image_size", "num_classes",
                                                          "channels")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m barlab.shard", description=__doc__.split("\n\n")[0])
    p.add_argument("source", choices=["fashion-mnist", "imagefolder", "synthetic"])
    p.add_argument("--out", required=True, help="output folder (becomes data.shards_dir)")
    p.add_argument("--maxcount", type=int, default=2000, help="samples per shard")
    p.add_argument("--workers", type=int, default=1, help="processes writing shards (same output for any number)")
    p.add_argument("--force", action="store_true", help="rewrite even if OUT already holds a finished dataset")
    g = p.add_argument_group("fashion-mnist")
    g.add_argument("--idx-dir", help="folder with the 4 IDX files (default: Debian package folder, else download)")
    g.add_argument("--no-download", action="store_true", help="never download")
    g = p.add_argument_group("imagefolder")
    g.add_argument("--root", help="folder with one sub-folder per class")
    g.add_argument("--val-root", help="val folder with the same class sub-folders")
    g.add_argument("--val-fraction", type=float, default=0.02)
    g.add_argument("--max-size", type=int, help="downscale so the shorter side is at most this")
    g = p.add_argument_group("synthetic")
    g.add_argument("--num-train", type=int, default=512)
    g.add_argument("--num-val", type=int, default=128)
    g.add_argument("--image-size", type=int, default=16)
    g.add_argument("--num-classes", type=int, default=4)
    g.add_argument("--channels", type=int, default=3)
    g.add_argument("--seed", type=int, default=0)
    return p


def make_source(args: argparse.Namespace):
    """The source object the arguments describe."""
    if args.source == "fashion-mnist":
        from barlab.data.fashion_mnist import FashionMNISTSource

        return FashionMNISTSource(idx_dir=args.idx_dir, allow_download=not args.no_download)
    if args.source == "imagefolder":
        from barlab.data.imagefolder import ImageFolderSource

        if not args.root:
            from barlab.errors import ConfigError

            raise ConfigError("data.source.root", "is required for imagefolder", fix="--root /path/to/train")
        return ImageFolderSource(args.root, val_root=args.val_root, val_fraction=args.val_fraction,
                                 max_size=args.max_size, seed=args.seed)
    from barlab.data.synthetic import SyntheticSource

    return SyntheticSource(num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
                           num_classes=args.num_classes, channels=args.channels, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from barlab.config.instantiate import knob_names
    from barlab.data.image_shards import ensure_shards, read_manifest, write_shards

    start = time.monotonic()
    try:
        with knob_names(SOURCE_KNOBS):
            source = make_source(args)
        if args.force or read_manifest(args.out) is None:
            with knob_names(out_dir="data.shards_dir", maxcount="--maxcount", workers="--workers"):
                manifest = write_shards(source, args.out, maxcount=args.maxcount, workers=args.workers) \
                    if args.force else ensure_shards(args.out, source, maxcount=args.maxcount, workers=args.workers)
        else:
            manifest = read_manifest(args.out)
            print(f"{args.out} already holds a finished dataset (use --force to rewrite)")
    except BarlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{split}={entry['num_samples']} ({len(entry['shards'])} shards)"
                       for split, entry in manifest["splits"].items())
    print(f"{manifest['source']} -> {args.out}: {counts}, {manifest['num_classes']} classes, "
          f"{manifest['channels']} channel(s), {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
