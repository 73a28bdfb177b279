"""The ``split`` processing step: validate every image, then write a seeded stratified train/validation/test split.

Container contract (all paths are arguments; defaults are SageMaker Processing's):
    input   /opt/ml/processing/input/data   ImageFolder tree: <class>/<image>, nested folders allowed
    output  /opt/ml/processing/train, /validation, /test   ImageFolder trees (files copied, names kept)
            /opt/ml/processing/manifest     manifest.json (counts per class and split, class index, seed, fractions)
                                            rejected.json (every unusable file and why)

Nothing is dropped silently: each file under a class folder lands in exactly one split or in ``rejected.json``.
Hidden files (``.DS_Store``) are listed under ``ignored`` in the manifest. A class with fewer images than splits
that need one stays whole in train, with a warning. Fewer than 2 usable classes is an error (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imgclf import data
from imgclf.hparams import add, quoted

SPLITS = ("train", "validation", "test")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(parser, "input-dir", default="/opt/ml/processing/input/data")
    add(parser, "train-dir", default="/opt/ml/processing/train")
    add(parser, "validation-dir", default="/opt/ml/processing/validation")
    add(parser, "test-dir", default="/opt/ml/processing/test")
    add(parser, "manifest-dir", default="/opt/ml/processing/manifest")
    add(parser, "train-fraction", type=quoted(float), default=0.8)
    add(parser, "validation-fraction", type=quoted(float), default=0.1)
    add(parser, "test-fraction", type=quoted(float), default=0.1)
    add(parser, "seed", type=quoted(int), default=42)
    add(parser, "max-image-pixels", type=quoted(int), default=data.MAX_IMAGE_PIXELS)
    args = parser.parse_args(argv)
    fractions = (args.train_fraction, args.validation_fraction, args.test_fraction)
    if any(f < 0 for f in fractions) or args.train_fraction <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        parser.error(f"fractions {fractions} must be >= 0, train > 0, and add up to 1")
    return args


def scan(input_dir: Path, max_pixels: int, workers: int = 8):
    """Check every file of every class folder.

    Returns ``(good, rejected, ignored, empty_classes)``: ``good`` maps class -> sorted relative paths of usable
    images, ``rejected`` is a list of ``{"path", "reason"}``, ``ignored`` the hidden files and folders, files at
    the root and links to folders (not followed: a link loop would never end).
    """
    candidates: list[tuple[str, Path]] = []
    ignored: list[str] = []
    for entry in sorted(input_dir.iterdir()):
        if data.is_hidden(entry) or entry.is_symlink() or not entry.is_dir():
            ignored.append(entry.name)
            continue
        # Walk without following folder links (a link loop would never end); record what is skipped.
        for dirpath, dirnames, filenames in os.walk(entry, followlinks=False):
            here = Path(dirpath)
            for name in sorted(dirnames):
                if name.startswith(".") or (here / name).is_symlink():
                    ignored.append((here / name).relative_to(input_dir).as_posix())
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (here / d).is_symlink())
            for name in sorted(filenames):
                if name.startswith("."):
                    ignored.append((here / name).relative_to(input_dir).as_posix())
                else:
                    candidates.append((entry.name, here / name))
    classes = data.list_classes(input_dir)

    def check(item):
        label, path = item
        if path.is_symlink() and not path.exists():
            return label, path, "broken symbolic link"
        return label, path, data.check_image(path, max_pixels)

    good: dict[str, list[str]] = {name: [] for name in classes}
    rejected: list[dict] = []
    # Decoding is I/O and C code that releases the GIL: threads keep every core busy on large trees.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for label, path, reason in pool.map(check, candidates):
            relative = path.relative_to(input_dir).as_posix()
            if reason is None:
                good[label].append(relative)
            else:
                rejected.append({"path": relative, "reason": reason})
    empty = [name for name in classes if not good[name]]
    return good, rejected, ignored, empty


def allocate(count: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Split ``count`` images of one class into (train, validation, test) sizes by ``fractions``.

    Each split with a non-zero fraction gets at least one image when the class has enough for all of them;
    otherwise the whole class goes to train (the caller warns).
    """
    needed = sum(1 for f in fractions if f > 0)
    if count < needed:
        return count, 0, 0
    validation = max(1, round(count * fractions[1])) if fractions[1] > 0 else 0
    test = max(1, round(count * fractions[2])) if fractions[2] > 0 else 0
    return count - validation - test, validation, test


def copy_file(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)


def write_json_atomic(path: Path, payload) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False, sort_keys=True)
    os.replace(handle.name, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    input_dir = Path(args.input_dir)
    if not input_dir.is_dir():
        print(f"error: input folder {input_dir} does not exist: point the split step's input at an ImageFolder "
              "tree (<class>/<image>)", file=sys.stderr)
        return 2
    fractions = (args.train_fraction, args.validation_fraction, args.test_fraction)
    good, rejected, ignored, empty = scan(input_dir, args.max_image_pixels)
    for name in empty:
        print(f"warning: class folder {name!r} has no usable image: left out of every split", file=sys.stderr)
    classes = [name for name in sorted(good) if good[name]]
    manifest_dir = Path(args.manifest_dir)
    write_json_atomic(manifest_dir / "rejected.json", rejected)
    if len(classes) < 2:
        print(f"error: {input_dir} has {len(classes)} class folder(s) with usable images; a classifier needs at least "
              "2: put each class's images in its own sub-folder (ImageFolder layout)", file=sys.stderr)
        return 2

    rng = random.Random(args.seed)
    outputs = dict(zip(SPLITS, (Path(args.train_dir), Path(args.validation_dir), Path(args.test_dir)), strict=True))
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    warnings: list[str] = []
    for name in classes:
        files = list(good[name])
        rng.shuffle(files)
        sizes = allocate(len(files), fractions)
        if sizes[0] == len(files) and len(files) > 0 and (fractions[1] > 0 or fractions[2] > 0):
            message = f"class {name!r} has only {len(files)} usable image(s): kept whole in train"
            warnings.append(message)
            print(f"warning: {message}", file=sys.stderr)
        start = 0
        for split, size in zip(SPLITS, sizes, strict=True):
            for relative in files[start:start + size]:
                copy_file(input_dir / relative, outputs[split] / relative)
            counts[name][split] = size
            start += size
    for split in SPLITS:
        outputs[split].mkdir(parents=True, exist_ok=True)  # an empty split is still a valid (empty) channel
    manifest = {
        "classes": classes,
        "class_to_idx": {name: index for index, name in enumerate(classes)},
        "counts": counts,
        "totals": {split: sum(counts[name][split] for name in classes) for split in SPLITS},
        "rejected": len(rejected),
        "ignored": ignored,
        "empty_classes": empty,
        "warnings": warnings,
        "seed": args.seed,
        "fractions": dict(zip(SPLITS, fractions, strict=True)),
    }
    write_json_atomic(manifest_dir / "manifest.json", manifest)
    print(f"split {sum(manifest['totals'].values())} images of {len(classes)} classes: "
          + " ".join(f"{split}={manifest['totals'][split]}" for split in SPLITS)
          + f" rejected={len(rejected)}")
    for item in rejected:
        print(f"rejected {item['path']}: {item['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
