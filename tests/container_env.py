"""Python 3.12 virtual environments standing in for the AWS PyTorch 2.6 training container's Python.

The PyTorch 2.6 DLC runs CPython 3.12 (aws/deep-learning-containers pytorch/training/docker/2.6/py3/cu126/
Dockerfile.gpu: ``PYTHON_VERSION=3.12.8``) and pip-installs the job's ``entrypoints/requirements.txt`` on top of
its own packages. A plain ``python3.12 -m venv`` has no setuptools (hence no ``distutils``), which is the strictest
case: whatever imports here imports in any 3.12 image.

``ensure_venv`` builds a venv once and caches it under ``.container-venvs/<name>-<hash>`` (git-ignored), keyed
on the interpreter's version and the exact requirement lines, so a changed ``requirements.txt`` builds a new one.
Building needs the package index (like ``make``'s main venv); using a built one does not.

Run as a script to build one by hand: ``python tests/container_env.py [--torch]``. ``make test`` runs it with
``--optional`` before pytest, so the tests themselves never reach the package index (a machine without Python 3.12
skips the container tests, with the reason).

``dlc_snapshot`` turns pip's installation report of the DLC's own packages into
``tests/dlc/dlc_pytorch_2.6_training.json`` (each package's version and its requirements on the packages that
``entrypoints/requirements.txt`` pins), which the requirements test checks offline. To refresh it::

    <py3.12>/bin/pip install --dry-run --no-deps --ignore-installed --report report.json \
        -r tests/dlc/dlc_pytorch_2.6_training_packages.txt
    python tests/container_env.py --dlc-snapshot report.json
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".container-venvs"
CONTAINER_REQUIREMENTS = REPO / "entrypoints" / "requirements.txt"
#: The training DLC's Python (Dockerfile.gpu ``PYTHON_SHORT_VERSION``).
CONTAINER_PYTHON = "3.12"
#: The DLC's own torch and torchvision (core_packages.json: torch==2.6.0+cu126, torchvision==0.21.0+cu126). PyPI
#: has no +cpu build for Linux: its 2.6.0 wheel is the CUDA one and pulls the nvidia-* wheels (several GB).
CONTAINER_TORCH = ("torch==2.6.0", "torchvision==0.21.0")
COMPLETE = ".complete"
DLC_PACKAGES = REPO / "tests" / "dlc" / "dlc_pytorch_2.6_training_packages.txt"
DLC_SNAPSHOT = REPO / "tests" / "dlc" / "dlc_pytorch_2.6_training.json"


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name (``Sagemaker_Training`` -> ``sagemaker-training``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.split(r"[\s;<>=!~\[(]", requirement.strip(), maxsplit=1)[0])


def dlc_snapshot(report: dict, pinned: set[str]) -> dict:
    """``{"packages": {name: {"version", "requires"}}}`` from a pip ``--report`` of the DLC's packages; ``requires``
    keeps the non-extra requirements on the ``pinned`` names (canonical)."""
    packages = {}
    for item in report["install"]:
        metadata = item["metadata"]
        requires = [r for r in metadata.get("requires_dist") or []
                    if requirement_name(r) in pinned and "extra ==" not in r]
        packages[canonical(metadata["name"])] = {"version": metadata["version"], "requires": requires}
    return {"packages": dict(sorted(packages.items()))}


def find_python(version: str = CONTAINER_PYTHON) -> str | None:
    """Path of a CPython ``version`` interpreter, or None: ``$CONTAINER_PYTHON``, ``python<version>`` on PATH,
    then pyenv's ``~/.pyenv/versions/<version>.*``."""
    candidates = [os.environ.get("CONTAINER_PYTHON"), shutil.which(f"python{version}")]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")), reverse=True)
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and _version(candidate) == version:
            return candidate
    return None


def _version(python: str) -> str:
    result = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip()


def requirement_lines(*files: Path, extra: tuple[str, ...] = ()) -> list[str]:
    """The requirement specifiers of ``files`` (comments and blank lines dropped) followed by ``extra``."""
    lines = []
    for path in files:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    return [*lines, *extra]


def ensure_venv(name: str, requirements: list[str], python: str, cache: Path = CACHE) -> Path:
    """Return the folder of a venv of ``python`` holding exactly ``requirements``, building it when missing.

    Raises ``subprocess.CalledProcessError`` (pip's output on stderr) when the install fails, e.g. offline.
    """
    key = hashlib.sha256("\n".join([_version(python), *requirements]).encode()).hexdigest()[:12]
    venv = Path(cache) / f"{name}-{key}"
    if (venv / COMPLETE).is_file():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    spec = venv / "requirements.txt"
    spec.write_text("\n".join(requirements) + "\n", encoding="utf-8")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(spec)], check=True)
    (venv / COMPLETE).touch()
    return venv


def main(argv: list[str] | None = None) -> int:
    """Build (or find) the container venv and print its folder; ``--torch`` adds torch 2.6.0/torchvision 0.21.0."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--torch", action="store_true", help="also install " + " ".join(CONTAINER_TORCH))
    parser.add_argument("--optional", action="store_true",
                        help=f"without a Python {CONTAINER_PYTHON}, say so and exit 0 (the tests then skip)")
    parser.add_argument("--dlc-snapshot", metavar="REPORT", help="write tests/dlc/dlc_pytorch_2.6_training.json "
                        "from this pip --report of the DLC's packages, then stop")
    args = parser.parse_args(argv)
    if args.dlc_snapshot:
        pinned = {requirement_name(line) for line in requirement_lines(CONTAINER_REQUIREMENTS)}
        report = json.loads(Path(args.dlc_snapshot).read_text(encoding="utf-8"))
        snapshot = {
            "source": "aws/deep-learning-containers pytorch/training/docker/2.6/py3/cu126/Dockerfile.gpu (sagemaker "
                      "stage): the pip install lines, torch/torchaudio left out (AWS's own builds)",
            "resolved_with": f"pip {report.get('pip_version')} --dry-run --no-deps: the newest release of each",
            **dlc_snapshot(report, pinned),
        }
        DLC_SNAPSHOT.write_text(json.dumps(snapshot, indent=1) + "\n", encoding="utf-8")
        print(DLC_SNAPSHOT)
        return 0
    python = find_python()
    if python is None and args.optional:
        print(f"note: no Python {CONTAINER_PYTHON} here: the container requirements tests will be skipped")
        return 0
    if python is None:
        print(f"error: no Python {CONTAINER_PYTHON} found; set CONTAINER_PYTHON=/path/to/python{CONTAINER_PYTHON}",
              file=sys.stderr)
        return 2
    extra = CONTAINER_TORCH if args.torch else ()
    venv = ensure_venv("py312-torch" if args.torch else "py312", requirement_lines(CONTAINER_REQUIREMENTS,
                                                                                   extra=extra), python)
    print(venv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
