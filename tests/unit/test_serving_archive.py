"""pipeline/serving/handlers.py: opening model archives and loading their handlers as the AWS container does."""

from __future__ import annotations

import io
import sys
import tarfile
import textwrap

import pytest

from pipeline.hashing import sha256_of
from pipeline.serving.handlers import (
    HandlerError,
    Handlers,
    ModelArchiveError,
    RequestContext,
    default_input_fn,
    default_output_fn,
    load_handlers,
    prepare_model_dir,
)


def make_archive(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_is_checked_and_extracted(tmp_path):
    archive = make_archive(tmp_path / "model.tar.gz", {"model.pth": b"weights", "code/inference.py": b"x = 1\n"})
    digest = sha256_of(archive)
    folder = prepare_model_dir(archive, tmp_path / "out", sha256=digest.upper())
    assert (folder / "model.pth").read_bytes() == b"weights" and (folder / "code" / "inference.py").is_file()
    with pytest.raises(ModelArchiveError, match=f"expected {'1' * 64}"):
        prepare_model_dir(archive, tmp_path / "again", sha256="1" * 64)
    assert not (tmp_path / "again").exists()  # nothing extracted from an archive that failed its check


def test_folder_forms(tmp_path):
    extracted = tmp_path / "extracted"
    (extracted / "code").mkdir(parents=True)
    assert prepare_model_dir(extracted, tmp_path / "unused") == extracted
    with pytest.raises(ModelArchiveError, match="extracted folder"):
        prepare_model_dir(extracted, tmp_path / "unused", sha256="0" * 64)
    holder = tmp_path / "artifacts"
    holder.mkdir()
    make_archive(holder / "model.tar.gz", {"model.pth": b"w"})
    assert (prepare_model_dir(holder, tmp_path / "out") / "model.pth").is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelArchiveError, match="neither model.pth nor exactly one"):
        prepare_model_dir(tmp_path / "empty", tmp_path / "out2")


def test_unsafe_members_are_refused_or_kept_inside(tmp_path):
    archive = make_archive(tmp_path / "model.tar.gz", {"../escape.txt": b"owned"})
    with pytest.raises(ModelArchiveError, match="cannot extract"):
        prepare_model_dir(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    linked = tmp_path / "link.tar.gz"
    with tarfile.open(linked, "w:gz") as tar:
        info = tarfile.TarInfo("model.pth")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ModelArchiveError, match="cannot extract"):
        prepare_model_dir(linked, tmp_path / "out-link")
    absolute = make_archive(tmp_path / "absolute.tar.gz", {"/abs-escape.txt": b"x"})
    folder = prepare_model_dir(absolute, tmp_path / "out-absolute")  # the data filter strips the leading slash
    assert (folder / "abs-escape.txt").read_bytes() == b"x"


def test_not_an_archive_and_missing_path(tmp_path):
    (tmp_path / "model.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(ModelArchiveError, match="not a tar archive"):
        prepare_model_dir(tmp_path / "model.tar.gz", tmp_path / "out")
    with pytest.raises(ModelArchiveError, match="does not exist"):
        prepare_model_dir(tmp_path / "nothing.tar.gz", tmp_path / "out")


def test_handlers_get_context_only_when_their_signature_asks(tmp_path):
    handlers = Handlers(tmp_path, *(lambda *a: a,) * 4, None, None)
    context = RequestContext(str(tmp_path), {"X-Top-K": "3"})
    assert handlers.call(lambda body, content_type: (body, content_type), b"x", "t", context=context) == (b"x", "t")
    got = handlers.call(lambda body, content_type, ctx: ctx, b"x", "t", context=context)
    assert got.request_processor[0].get_request_properties() == {"X-Top-K": "3"}
    with pytest.raises(TypeError, match="takes 1 arguments"):
        handlers.call(lambda only: only, b"x", "t", context=context)


def test_archive_code_shadows_an_already_imported_package(tmp_path):
    """The archive's own helper package is imported even when one of that name was imported before (as the
    checkout's entrypoints/imgclf is in `python -m pipeline serve`)."""
    name = "shadowed_helpers_pkg"
    stale = tmp_path / "stale"
    (stale / name).mkdir(parents=True)
    (stale / name / "__init__.py").write_text("WHERE = 'checkout'\n")
    sys.path.insert(0, str(stale))
    try:
        __import__(name)
        assert sys.modules[name].WHERE == "checkout"
        code = tmp_path / "model" / "code"
        (code / name).mkdir(parents=True)
        (code / name / "__init__.py").write_text("WHERE = 'archive'\n")
        (code / "inference.py").write_text(textwrap.dedent(f"""
            import {name}

            def model_fn(model_dir):
                return {name}.WHERE
        """))
        handlers = load_handlers(tmp_path / "model")
        assert handlers.model_fn(str(tmp_path / "model")) == "archive"
        assert handlers.input_fn is default_input_fn and handlers.output_fn is default_output_fn
    finally:
        sys.path.remove(str(stale))
        sys.path.remove(str(tmp_path / "model" / "code"))
        sys.modules.pop(name, None)
        sys.modules.pop("inference", None)


def test_transform_fn_with_input_fn_is_refused(tmp_path):
    code = tmp_path / "model" / "code"
    code.mkdir(parents=True)
    (code / "inference.py").write_text("def transform_fn(m, d, c, a):\n    return d\n\n\ndef input_fn(b, c):\n"
                                       "    return b\n")
    try:
        with pytest.raises(ModelArchiveError, match="transform_fn together with"):
            load_handlers(tmp_path / "model")
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("inference", None)


def test_default_handlers_follow_the_toolkit():
    tensor = default_input_fn("[[1, 2], [3, 4]]", "application/json")
    assert tensor.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert default_input_fn(b"1,2\n3,4\n", "text/csv").shape == (2, 2)
    assert default_output_fn(tensor, "application/json") == ("[[1.0, 2.0], [3.0, 4.0]]", "application/json")
    with pytest.raises(HandlerError) as unsupported:
        default_input_fn(b"x", "image/png")
    assert unsupported.value.status_code == 415
    with pytest.raises(HandlerError) as not_acceptable:
        default_output_fn(tensor, "image/png")
    assert not_acceptable.value.status_code == 406
