"""Photo-like JPEGs made at bench time: an ImageFolder tree of 500x375 images, the Stanford Dogs median size.

Each image is smooth colour noise (a low-resolution random field upsampled bicubically, like out-of-focus
background), a few filled shapes whose kind depends on the class (so a model can learn something), and
per-pixel grain (so the JPEGs compress like photographs, ~40-70 KB at quality 90, not like flat drawings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Stanford Dogs (the dog-breed data set of the seed write-ups): most photos are about 500x375 pixels.
PHOTO_SIZE = (500, 375)
SHAPES = ("ellipse", "rectangle", "polygon", "line")


def photo_like(rng: np.random.Generator, label: int, size: tuple[int, int] = PHOTO_SIZE) -> Image.Image:
    """One RGB image of ``size`` (width, height) whose foreground shapes are of kind ``SHAPES[label % 4]``."""
    width, height = size
    field = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(field, "RGB").resize(size, Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    kind = SHAPES[label % len(SHAPES)]
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
        x1, y1 = x0 + int(rng.integers(40, 200)), y0 + int(rng.integers(40, 160))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if kind == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == "polygon":
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(6, 20)))
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    grain = rng.normal(0.0, 6.0, size=(height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8), "RGB")


def write_photo_folder(root: Path, images: int, classes: int = 4, seed: int = 0, quality: int = 90,
                       size: tuple[int, int] = PHOTO_SIZE) -> Path:
    """Write ``images`` JPEGs as ``root/class_<k>/<n>.jpg`` (ImageFolder layout), spread evenly over ``classes``.

    Returns ``root``. Existing files are overwritten; the same ``seed`` writes the same bytes.

    Raises:
        ValueError: fewer than 2 classes, or fewer images than classes.
    """
    if classes < 2 or images < classes:
        raise ValueError(f"need >= 2 classes and >= 1 image per class, got {images} images, {classes} classes")
    rng = np.random.default_rng(seed)
    for index in range(images):
        label = index % classes
        folder = Path(root) / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        photo_like(rng, label, size).save(folder / f"{index:05d}.jpg", quality=quality)
    return Path(root)
