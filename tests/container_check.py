"""``make container-check``: the job scripts under the AWS PyTorch 2.6 containers' own versions, once, on digits.

The tests run on this machine's torch; the jobs run in AWS on the DLC's torch 2.6.0 / torchvision 0.21.0 and
Python 3.12 (pipeline.yaml ``framework``). This builds (once, cached) a Python 3.12 venv with those two from PyPI
plus ``entrypoints/requirements.txt`` (``tests/container_env.py --torch``: a few GB, the CUDA wheels being the
only Linux ones on PyPI) and runs, as the containers would, with the venv's Python and ``entrypoints/`` as the
working folder:

    split.py (300 digits, 28 px) -> train.py (2 epochs, Debugger hook on) -> debug.py -> evaluate.py
    -> inference.py's model_fn / input_fn / predict_fn / output_fn on one test PNG

Any API newer than the container's torch fails here. Prints one line per script and exits non-zero at the first
failure, with the script's output. Not part of ``make test`` (downloads gigabytes on the first run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import container_env  # noqa: E402

ENTRYPOINTS = container_env.REPO / "entrypoints"

INFERENCE = """
import json, sys
from pathlib import Path
import inference
model = inference.model_fn(sys.argv[1])
body = Path(sys.argv[2]).read_bytes()
batch = inference.input_fn(body, "image/png")
prediction = inference.predict_fn(batch, model)
print(json.dumps(json.loads(inference.output_fn(prediction, "application/json")[0])))
"""


def run(python: Path, label: str, *args: str) -> str:
    """Run ``python args`` in entrypoints/ and print a one-line result; exit 1 with its output when it fails."""
    start = time.perf_counter()
    result = subprocess.run([str(python), *args], cwd=ENTRYPOINTS, capture_output=True, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "SM_NUM_CPUS": "2"}, timeout=1800)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        print(f"FAIL {label} (exit {result.returncode}, {seconds:.0f} s)\nstdout:\n{result.stdout[-4000:]}\n"
              f"stderr:\n{result.stderr[-4000:]}")
        sys.exit(1)
    print(f"ok   {label} ({seconds:.0f} s)")
    return result.stdout


def main() -> int:
    """Build the torch 2.6 venv, then run the scripts; see the module docstring."""
    python_exe = container_env.find_python()
    if python_exe is None:
        print(f"error: no Python {container_env.CONTAINER_PYTHON}; set CONTAINER_PYTHON", file=sys.stderr)
        return 2
    lines = container_env.requirement_lines(container_env.CONTAINER_REQUIREMENTS, extra=container_env.CONTAINER_TORCH)
    start = time.perf_counter()
    venv = container_env.ensure_venv("py312-torch", lines, python_exe)
    python = venv / "bin" / "python"
    versions = subprocess.run([str(python), "-c", "import sys, torch, torchvision, numpy, smdebug; print("
                               "sys.version.split()[0], torch.__version__, torchvision.__version__, "
                               "numpy.__version__, smdebug.__version__)"],
                              capture_output=True, text=True, check=True).stdout.split()
    print(f"venv {venv} ({time.perf_counter() - start:.0f} s): python {versions[0]} torch {versions[1]} "
          f"torchvision {versions[2]} numpy {versions[3]} smdebug {versions[4]}")
    with tempfile.TemporaryDirectory(prefix="container-check-") as tmp:
        work = Path(tmp)
        from pipeline.sample_data import write_digits

        write_digits(work / "digits", 30, "png")
        split = {name: str(work / name) for name in ("train", "validation", "test", "manifest")}
        run(python, "split.py", "split.py", "--input-dir", str(work / "digits"), "--train-dir", split["train"],
            "--validation-dir", split["validation"], "--test-dir", split["test"], "--manifest-dir", split["manifest"])
        output = work / "output"
        train_stdout = run(python, "train.py", "train.py", "--train-dir", split["train"],
                           "--validation-dir", split["validation"], "--model-dir", str(work / "model"),
                           "--output-data-dir", str(output), "--checkpoint-dir", str(work / "checkpoints"),
                           "--image-size", "28", "--epochs", "2", "--batch-size", "32", "--lr", "0.05",
                           "--debug-save-interval", "5")
        print("     " + [line for line in train_stdout.splitlines() if line.startswith("epoch=")][-1])
        if not any((output / "tensors").rglob("*.tfevents")):
            print(f"FAIL train.py saved no smdebug tensors: {sorted(p.name for p in (output / 'tensors').iterdir())}")
            return 1
        run(python, "debug.py", "debug.py", "--training-output", str(output), "--output-dir", str(work / "debug"))
        summary = json.loads((work / "debug" / "debug.json").read_text())["summary"]
        print(f"     debug.json statuses {summary['statuses']}")
        if summary["blocking_not_judged"]:
            print(f"FAIL blocking rules did not judge: {summary['blocking_reason']}")
            return 1
        run(python, "evaluate.py", "evaluate.py", "--model-dir", str(work / "model"), "--test-dir", split["test"],
            "--output-dir", str(work / "evaluation"))
        evaluation = json.loads((work / "evaluation" / "evaluation.json").read_text())
        print(f"     test accuracy {evaluation['multiclass_classification_metrics']['accuracy']['value']:.3f}")
        image = next(Path(split["test"]).rglob("*.png"))
        served = run(python, "inference.py", "-c", INFERENCE, str(work / "model"), str(image))
        print(f"     {image.parent.name}/{image.name} -> {served.strip().splitlines()[-1][:160]}")
    print("container-check passed: split, train, debug, evaluate and inference run under the DLC's versions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
