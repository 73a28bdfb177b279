"""Issue 14, defect 4: the train step runs under ``torch_distributed`` whatever ``TrainingInstanceCount`` is, and
train.py under that launcher is one training for one instance and one DDP training for two.

The launch is what the SageMaker training toolkit runs for a ``sagemaker_torch_distributed_enabled`` job
(sagemaker-training-toolkit ``torch_distributed.TorchDistributedRunner._create_command``): on each host
``torchrun --nnodes <hosts> --nproc_per_node <GPUs, 1 on CPU> [--master_addr algo-1 --master_port 7777
--node_rank <i>] train.py <hyperparameters>``. Here the hosts are processes on loopback (a free port instead of
7777, since tests run side by side), each with its own model folder as each instance has its own /opt/ml/model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.build import definition_json
from pipeline.config import load_config
from pipeline.serving.server import free_port
from tests.conftest import ENTRYPOINTS


def _launch(hosts: int, digits_split, folder) -> list[subprocess.CompletedProcess]:
    port = free_port()
    processes = []
    for rank in range(hosts):
        host = folder / f"algo-{rank + 1}"
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(hosts), "--nproc_per_node", "1",
                   "--master_addr", "127.0.0.1", "--master_port", str(port), "--node_rank", str(rank), "train.py",
                   "--train-dir", str(digits_split / "train"), "--validation-dir", str(digits_split / "validation"),
                   "--model-dir", str(host / "model"), "--output-data-dir", str(host / "output"),
                   "--checkpoint-dir", str(host / "checkpoints"), "--image-size", "28", "--epochs", "1",
                   "--batch-size", "32", "--max-steps-per-epoch", "6", "--augment", "none", "--debugger", "false",
                   "--workers", "0", "--threads", "1"]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen(command, cwd=ENTRYPOINTS, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))  # fmt: skip
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, ""))
    return results


@pytest.mark.parametrize("hosts", [1, 2])
def test_train_step_is_one_training_for_one_or_two_instances(hosts, digits_split, tmp_path):
    train = next(s for s in json.loads(definition_json(load_config()))["Steps"] if s["Name"] == "train")["Arguments"]
    # the launcher is on for the default count of 1 too; the count is the start-time parameter
    assert train["HyperParameters"]["sagemaker_torch_distributed_enabled"] == "true"
    assert train["ResourceConfig"]["InstanceCount"] == {"Get": "Parameters.TrainingInstanceCount"}

    results = _launch(hosts, digits_split, tmp_path)
    for result in results:
        assert result.returncode == 0, result.stdout[-3000:]
        assert f"world_size={hosts}" in result.stdout
    # one training: only the first host (rank 0) writes the model that SageMaker uploads
    assert (tmp_path / "algo-1" / "model" / "model.pth").is_file()
    for rank in range(1, hosts):
        assert not (tmp_path / f"algo-{rank + 1}" / "model" / "model.pth").exists()
