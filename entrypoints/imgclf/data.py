"""Images on disk: checking, decoding to RGB tensors, ImageFolder listing and the training/evaluation datasets.

ImageFolder layout (torchvision's): ``root/<class name>/<image file>``. Files may sit in nested folders below a
class folder; hidden files and folders (a leading ``.``, e.g. ``.DS_Store``) are ignored, never counted as bad.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

#: Suffixes accepted as images, compared case-insensitively (``.JPG`` is a JPEG).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Decompression-bomb guard: the largest image accepted, in pixels (PIL's own warning limit is 89.5 Mpx).
MAX_IMAGE_PIXELS = 50_000_000


class ImageError(ValueError):
    """An image that cannot be used: the message says why (empty, truncated, not an image, too large)."""


def is_hidden(path: Path) -> bool:
    """True for names starting with ``.`` (``.DS_Store``, ``._x.jpg`` resource forks, ``.ipynb_checkpoints``)."""
    return path.name.startswith(".")


def has_image_suffix(path: Path) -> bool:
    """True when the suffix, in any case, is one of :data:`IMAGE_SUFFIXES`."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, applying the EXIF orientation first.

    Handles ``L``, ``LA``, ``P`` (palette, with or without transparency), ``RGBA`` (composited on white),
    ``CMYK``, ``I;16``/``I`` (16/32-bit grayscale, scaled to 0-255 by the image's own range) and ``F``.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes into an RGB PIL image.

    Raises:
        ImageError: empty bytes, not an image, a truncated file, or more than ``max_pixels`` pixels.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise ImageError(f"image of {width}x{height} pixels is over the limit of {max_pixels} pixels")
            probe.verify()  # checks the container and checksums without decoding the pixels
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel: finds truncated files that verify() lets through
            return to_rgb(image)
    except ImageError:
        raise
    except UnidentifiedImageError as error:
        raise ImageError("not an image PIL can read (unknown or corrupt format)") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"corrupt or truncated image: {error}") from error


def check_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Return None when ``path`` is a usable image, else the reason it is not (one short sentence)."""
    if not has_image_suffix(path):
        return f"unsupported suffix {path.suffix!r}: use one of {', '.join(IMAGE_SUFFIXES)}"
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file (0 bytes)"
        decode_image(path.read_bytes(), max_pixels)
    except ImageError as error:
        return str(error)
    except OSError as error:
        return f"cannot read file: {error.strerror or error}"
    return None


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``uint8`` tensor of shape ``(3, H, W)``."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_image_tensor(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a ``uint8`` RGB tensor ``(3, H, W)``.

    PNG, JPEG, GIF and WebP decode with ``torchvision.io.decode_image`` (libpng/libjpeg, faster than PIL); other
    formats, and files torchvision refuses, go through PIL with :func:`to_rgb`.
    """
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode_image

    data = Path(path).read_bytes()
    if Path(path).suffix.lower() in (".png", ".jpg", ".jpeg", ".gif", ".webp"):
        try:
            tensor = tv_decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            if tensor.dim() == 4:  # animated GIF: first frame
                tensor = tensor[0]
            return tensor
        except RuntimeError:
            pass  # e.g. 16-bit or CMYK: PIL handles them
    return pil_to_tensor(decode_image(data))


@dataclass(frozen=True)
class Sample:
    """One image of an ImageFolder tree: its path and its class name."""

    path: Path
    label: str


def list_classes(root: Path) -> list[str]:
    """Sorted names of the non-hidden class folders directly under ``root``.

    A link to a folder is not a class: a link to the tree itself would copy every image into a bogus class.
    """
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.is_symlink() and not is_hidden(p))


def iter_class_files(class_dir: Path):
    """Yield every non-hidden file below ``class_dir`` (nested folders included), sorted, following no link loops."""
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


class ImageFolderDataset(torch.utils.data.Dataset):
    """An ImageFolder tree as ``(image tensor, class index)`` pairs, with the class index fixed by ``classes``.

    Every epoch reads the same files: with ``cache_bytes`` > 0 the dataset keeps what it computed for an image in
    memory, up to that many bytes, so that later epochs skip the decode and, for a preset of
    :mod:`imgclf.presets`, its ``deterministic_part`` (resize, crop; all of it without augmentation): only its
    ``random_part`` runs again. Images past the budget are read from disk each time. Under DataLoader workers each
    worker process holds its own cache: divide the budget among them.

    Args:
        root: the tree (e.g. ``SM_CHANNEL_TRAIN``).
        classes: class names in index order (from the training channel), so a validation or test tree that lacks a
            class still maps every label to the training index.
        transform: applied to the ``uint8`` ``(3, H, W)`` tensor (a preset from :mod:`imgclf.presets`).
        cache_bytes: the most memory this dataset's cache may hold, in bytes (default 0: no cache).

    Raises:
        ValueError: the tree holds a class that is not in ``classes``, or no image at all.
    """

    def __init__(self, root: str | os.PathLike, classes: list[str], transform=None, cache_bytes: int = 0):
        self.root = Path(root)
        self.classes = list(classes)
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        unknown = [name for name in list_classes(self.root) if name not in self.class_to_idx]
        if unknown:
            raise ValueError(f"{self.root} has classes not seen in training: {unknown[:5]}")
        self.samples = [
            (path, self.class_to_idx[name])
            for name in list_classes(self.root)
            for path in iter_class_files(self.root / name)
            if has_image_suffix(path)
        ]
        if not self.samples:
            raise ValueError(f"no images under {self.root}: expected <class>/<image> files (ImageFolder layout)")
        self.targets = [target for _, target in self.samples]
        self.transform = transform
        self.cache_bytes = max(0, int(cache_bytes))
        self._cache: dict[int, torch.Tensor] = {}
        self._cached_bytes = 0
        # what is the same every epoch is cached; a plain callable counts as random (runs every time)
        if transform is None or hasattr(transform, "deterministic_part"):
            self._fixed = getattr(transform, "deterministic_part", None)
            self._random = getattr(transform, "random_part", None)
        else:
            self._fixed, self._random = None, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        image = self._cache.get(index)
        if image is None:
            image = read_image_tensor(path)
            if self._fixed is not None:
                image = self._fixed(image)
            self._keep(index, image)
        if self._random is not None:
            image = self._random(image)
        return image, target

    def _keep(self, index: int, image: torch.Tensor) -> None:
        size = image.numel() * image.element_size()
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[index] = image
            self._cached_bytes += size
