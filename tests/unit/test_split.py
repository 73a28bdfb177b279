"""split.py on a messy tree: every good image lands in exactly one split, every bad file is named with a reason."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_script


def png_bytes(value: int, size=(12, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, color=value).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), color=(value, 0, 0)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture()
def messy_tree(tmp_path, digits_dir) -> tuple[Path, dict]:
    """Real digits in two classes plus every kind of bad file; returns the tree and the expected facts."""
    root = tmp_path / "images"
    good: set[str] = set()
    for label in ("0_zero", "1_one"):
        (root / label).mkdir(parents=True)
        for source in sorted((digits_dir / label).iterdir())[:20]:
            (root / label / source.name).write_bytes(source.read_bytes())
            good.add(f"{label}/{source.name}")
    unicode_class = "chien_été_犬"
    (root / unicode_class / "nested" / "deeper").mkdir(parents=True)
    for i in range(10):
        (root / unicode_class / "nested" / "deeper" / f"img{i}.JPG").write_bytes(jpeg_bytes(i * 20))
        good.add(f"{unicode_class}/nested/deeper/img{i}.JPG")
    (root / "lonely").mkdir()
    (root / "lonely" / "only.PNG").write_bytes(png_bytes(128))
    good.add("lonely/only.PNG")
    (root / "empty_class").mkdir()
    truncated = png_bytes(50, size=(64, 64))
    bad = {
        "0_zero/zero_bytes.png": b"",
        "0_zero/truncated.png": truncated[: len(truncated) // 2],
        "1_one/not_an_image.jpg": b"this is a text file, not a JPEG",
        "1_one/notes.txt": b"readme",
    }
    for relative, content in bad.items():
        (root / relative).write_bytes(content)
    (root / "0_zero" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / ".hidden_dir").mkdir()
    (root / ".hidden_dir" / "x.png").write_bytes(png_bytes(1))
    return root, {"good": good, "bad": set(bad)}


def split(root: Path, out: Path, *extra: str, check=True):
    return run_script("split.py", "--input-dir", str(root), "--train-dir", str(out / "train"),
                      "--validation-dir", str(out / "validation"), "--test-dir", str(out / "test"),
                      "--manifest-dir", str(out / "manifest"), *extra, check=check)


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_messy_tree_loses_nothing(messy_tree, tmp_path):
    root, expected = messy_tree
    out = tmp_path / "out"
    result = split(root, out)
    placed = {name: files_under(out / name) for name in ("train", "validation", "test")}
    everything = placed["train"] | placed["validation"] | placed["test"]
    assert everything == expected["good"]
    assert sum(len(files) for files in placed.values()) == len(expected["good"])  # exactly one split each
    rejected = json.loads((out / "manifest" / "rejected.json").read_text(encoding="utf-8"))
    assert {item["path"] for item in rejected} == expected["bad"]
    reasons = {item["path"]: item["reason"] for item in rejected}
    assert "0 bytes" in reasons["0_zero/zero_bytes.png"]
    assert "truncated" in reasons["0_zero/truncated.png"] or "corrupt" in reasons["0_zero/truncated.png"]
    assert "suffix" in reasons["1_one/notes.txt"]
    manifest = json.loads((out / "manifest" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["classes"] == sorted(["0_zero", "1_one", "chien_été_犬", "lonely"])
    assert manifest["counts"]["lonely"] == {"train": 1, "validation": 0, "test": 0}
    assert any("lonely" in warning for warning in manifest["warnings"])
    assert manifest["empty_classes"] == ["empty_class"]
    assert manifest["counts"]["0_zero"] == {"train": 16, "validation": 2, "test": 2}
    assert manifest["totals"]["train"] == len(placed["train"])
    assert ".hidden_dir" in manifest["ignored"] and "0_zero/.DS_Store" in manifest["ignored"]
    assert "warning: class 'lonely'" in result.stderr


def test_split_is_seeded_and_stratified(digits_dir, tmp_path):
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    split(digits_dir, first)
    split(digits_dir, second)
    split(digits_dir, other, "--seed", "7")
    assert files_under(first / "test") == files_under(second / "test")
    assert files_under(first / "test") != files_under(other / "test")
    manifest = json.loads((first / "manifest" / "manifest.json").read_text())
    for label in manifest["classes"]:  # 60 per class at 0.8/0.1/0.1
        assert manifest["counts"][label] == {"train": 48, "validation": 6, "test": 6}


def test_fewer_than_two_classes_is_an_error(tmp_path):
    root = tmp_path / "one_class"
    (root / "cats").mkdir(parents=True)
    for i in range(5):
        (root / "cats" / f"{i}.png").write_bytes(png_bytes(i))
    (root / "dogs").mkdir()
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG not really")
    result = split(root, tmp_path / "out", check=False)
    assert result.returncode == 2
    assert "at least 2" in result.stderr and "ImageFolder" in result.stderr
    rejected = json.loads((tmp_path / "out" / "manifest" / "rejected.json").read_text())
    assert [item["path"] for item in rejected] == ["dogs/broken.png"]


def test_bad_fractions_are_refused(digits_dir, tmp_path):
    result = split(digits_dir, tmp_path / "out", "--train-fraction", "0.9", "--test-fraction", "0.3", check=False)
    assert result.returncode == 2
    assert "add up to 1" in result.stderr
