"""Untrusted artifacts: every tar extraction site refuses what could escape its folder; registered archives are
pinned by SHA-256 and serving refuses a tampered one.

Extraction sites (``grep -rn "extractall\\|tarfile.open" pipeline entrypoints``):

- ``pipeline/serving/handlers.py: prepare_model_dir``: the model archive the endpoint serves;
- ``pipeline/local/jobs.py: extract_code``: ``sourcedir.tar.gz`` of a local processing job;
- ``entrypoints/evaluate.py: extract_model``: the model archive of the evaluate step;
- ``entrypoints/imgclf/debugger/runner.py: locate_training_output``: the train job's ``output.tar.gz``;
- ``pipeline/local/report/`` only reads ``.json`` members into memory (``extractfile``): nothing is written.

Each site is fed one archive per hostile member kind (PEP 706's threat list): ``..`` traversal, an absolute path, a
symbolic link out (absolute and relative), a hard link to an absolute path, a character device, a FIFO, and a
setuid file. Refused kinds must raise the site's error naming the member and write nothing outside; an absolute
path is defused (extracted inside, as tarfile's ``data`` filter strips the leading ``/``) and a setuid bit dropped.
"""

from __future__ import annotations

import importlib.util
import io
import json
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipeline.local.jobs import JobError, extract_code
from pipeline.local.registry import ModelRegistry, RegistryError, resolve_model_package
from pipeline.local.store import Store
from pipeline.serving.handlers import ModelArchiveError, prepare_model_dir
from pipeline.serving.server import EndpointStartError, start_in_background
from tests.conftest import ENTRYPOINTS, ROOT

BENIGN = ("model_config.json", b"{}")


def _entrypoint_module(name: str):
    """Import ``entrypoints/<name>.py`` under a private name (``evaluate`` is a common package name)."""
    spec = importlib.util.spec_from_file_location(f"_reliability_{name}", ENTRYPOINTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hostile_archive(path: Path, kind: str, outside: Path) -> tuple[Path, str]:
    """Write ``path`` (.tar.gz) holding one benign file and one member of ``kind``; return it and the member name.

    ``outside`` is a path outside every destination that an escaping member would create or point at.
    """
    info = tarfile.TarInfo()
    payload = b""
    if kind == "traversal":
        info.name = "../" * 6 + str(outside).lstrip("/")
        payload = b"owned"
    elif kind == "absolute":
        info.name = str(outside)
        payload = b"owned"
    elif kind == "symlink-absolute":
        info.name, info.type, info.linkname = "link", tarfile.SYMTYPE, str(outside)
    elif kind == "symlink-relative":
        info.name, info.type, info.linkname = "sub/link", tarfile.SYMTYPE, "../" * 8 + str(outside).lstrip("/")
    elif kind == "hardlink":
        info.name, info.type, info.linkname = "hard", tarfile.LNKTYPE, str(outside)
    elif kind == "device":
        info.name, info.type, info.devmajor, info.devminor = "null", tarfile.CHRTYPE, 1, 3
    elif kind == "fifo":
        info.name, info.type = "pipe", tarfile.FIFOTYPE
    elif kind == "setuid":
        info.name, info.mode = "run.sh", 0o4777
        payload = b"#!/bin/sh\n"
    else:
        raise ValueError(kind)
    info.size = len(payload)
    with tarfile.open(path, "w:gz") as tar:
        benign = tarfile.TarInfo(BENIGN[0])
        benign.size = len(BENIGN[1])
        tar.addfile(benign, io.BytesIO(BENIGN[1]))
        tar.addfile(info, io.BytesIO(payload) if payload else None)
    return path, info.name


REFUSED = ("traversal", "symlink-absolute", "symlink-relative", "hardlink", "device", "fifo")
DEFUSED = ("absolute", "setuid")


def _serving(archive: Path, destination: Path) -> None:
    prepare_model_dir(archive, destination)


def _local_code(archive: Path, destination: Path) -> None:
    extract_code(archive, destination)


def _evaluate(archive: Path, destination: Path) -> None:
    holder = archive.parent / "model-artifacts"
    holder.mkdir(exist_ok=True)
    archive.rename(holder / "model.tar.gz")
    _entrypoint_module("evaluate").extract_model(holder, destination)


def _debugger(archive: Path, destination: Path) -> None:
    from imgclf.debugger.runner import locate_training_output

    locate_training_output(archive, destination)


SITES = {"serving": (_serving, ModelArchiveError), "local-code": (_local_code, JobError),
         "evaluate": (_evaluate, tarfile.TarError), "debugger": (_debugger, tarfile.TarError)}


@pytest.mark.parametrize("kind", REFUSED + DEFUSED)
@pytest.mark.parametrize("site", sorted(SITES))
def test_every_extraction_site_refuses_or_defuses_hostile_members(site, kind, tmp_path):
    extract, error_type = SITES[site]
    outside = tmp_path / "outside" / f"{site}-{kind}.txt"
    (tmp_path / "in").mkdir()
    archive, member = hostile_archive(tmp_path / "in" / "archive.tar.gz", kind, outside)
    destination = tmp_path / "dest"
    if kind in REFUSED:
        with pytest.raises(error_type) as raised:
            extract(archive, destination)
        assert member in str(raised.value) or repr(member) in str(raised.value), str(raised.value)
    else:
        extract(archive, destination)
        extracted = [p for p in destination.rglob("*") if p.is_file()]
        if kind == "absolute":
            assert any(p.read_bytes() == b"owned" for p in extracted)  # kept inside, leading "/" stripped
        else:
            script = next(p for p in extracted if p.name == "run.sh")
            assert not script.stat().st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH)
    assert not outside.exists() and not outside.is_symlink()
    assert not (tmp_path / "outside").exists()
    for path in destination.rglob("*") if destination.exists() else ():
        assert path.resolve().is_relative_to(destination.resolve()), f"{path} leads out of {destination}"
        assert not (path.is_char_device() or path.is_block_device() or path.is_fifo()), path


def test_report_reads_training_output_members_without_writing(tmp_path):
    """The report opens output.tar.gz but only reads .json members into memory: a hostile member writes nothing."""
    modules = sorted((ROOT / "pipeline" / "local" / "report").glob("*.py"))
    assert any("tarfile.open" in module.read_text(encoding="utf-8") for module in modules)  # the check looks here
    for module in modules:
        source = module.read_text(encoding="utf-8")
        assert "extractall" not in source and ".extract(" not in source, module


@pytest.mark.parametrize("script", ["evaluate.py", "debug.py"])
def test_scripts_fail_with_one_clear_line_on_a_hostile_archive(script, tmp_path):
    """As a container runs them: exit status != 0, the member named in stderr, and no traceback."""
    outside = tmp_path / "outside" / "escape.txt"
    holder = tmp_path / "artifacts"
    holder.mkdir()
    archive, member = hostile_archive(holder / "model.tar.gz", "symlink-relative", outside)
    if script == "evaluate.py":
        (tmp_path / "test" / "a").mkdir(parents=True)
        args = ["--model-dir", str(holder), "--test-dir", str(tmp_path / "test"), "--output-dir", str(tmp_path / "o")]
    else:
        args = ["--training-output", str(archive), "--output-dir", str(tmp_path / "o")]
    result = subprocess.run([sys.executable, str(ENTRYPOINTS / script), *args], cwd=ENTRYPOINTS,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert member in result.stderr
    assert not outside.exists() and not (tmp_path / "o" / "debug.json").exists()
    assert "Traceback" not in result.stderr, result.stderr


# -- SHA-256 pinning: register, tamper, serve ------------------------------------------------------------------


def _tamper(archive: Path) -> None:
    """Rewrite the archive with classes.json's labels swapped: still a valid model.tar.gz, different bytes."""
    buffer = io.BytesIO()
    with tarfile.open(archive) as source, tarfile.open(fileobj=buffer, mode="w:gz") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            if member.name == "classes.json":
                data = json.dumps(list(reversed(json.loads(data)))).encode()
                member.size = len(data)
            target.addfile(member, io.BytesIO(data) if data is not None else None)
    archive.write_bytes(buffer.getvalue())


@pytest.mark.slow
def test_registry_pins_the_archive_and_serving_refuses_it_after_tampering(tmp_path, tiny_model):
    store = Store(tmp_path / "store")
    uri = "s3://bucket/models/job-1/output/model.tar.gz"
    store.put_bytes(uri, (tiny_model / "model.tar.gz").read_bytes())
    package = ModelRegistry(store).create_model_package({
        "ModelPackageGroupName": "digits", "ModelApprovalStatus": "Approved",
        "InferenceSpecification": {"Containers": [{"Image": "pytorch-inference", "ModelDataUrl": uri}],
                                   "SupportedContentTypes": ["image/png"],
                                   "SupportedResponseMIMETypes": ["application/json"]}})  # fmt: skip
    resolved = resolve_model_package(store.root, "latest")
    assert package["ModelDataSha256"][uri] == resolved["sha256"]
    with start_in_background(resolved["model_path"], sha256=resolved["sha256"], num_threads=1,
                             log_path=tmp_path / "good.log"):
        pass  # healthy: /ping answered 200 on the registered bytes

    _tamper(store.path(uri))
    with pytest.raises(RegistryError, match="SHA-256 differs"):
        resolve_model_package(store.root, package["ModelPackageArn"])
    # `serve --model <package>` (and the local deploy step, which resolves the same way) refuses in one line.
    served = subprocess.run([sys.executable, "-m", "pipeline", "serve", "--model", "digits/1", "--store",
                             str(store.root), "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert served.returncode == 2, served.stderr
    assert "SHA-256 differs" in served.stderr and "Traceback" not in served.stderr
    # The server checks again before extracting (the archive may change after the registry lookup).
    with pytest.raises(EndpointStartError, match="SHA-256 of .* is [0-9a-f]{64}, expected"):
        start_in_background(store.path(uri), sha256=resolved["sha256"], num_threads=1, log_path=tmp_path / "bad.log")
