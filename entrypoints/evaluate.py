"""The ``evaluate`` processing step: test-set metrics of the trained model into ``evaluation.json``.

Container contract (paths are arguments; defaults are SageMaker Processing's):
    input   /opt/ml/processing/model        model.tar.gz (the training job's model artifacts) or its extracted files
            /opt/ml/processing/test         the test split (ImageFolder) written by split.py
    output  /opt/ml/processing/evaluation   evaluation.json

``evaluation.json`` has the Model Registry's multiclass metrics shape (imgclf/schemas.py) plus ``per_class``
(precision, recall, F1, support) and ``confusion_matrix`` (rows: true class, columns: predicted class). Accuracy's
``standard_deviation`` is the binomial one, sqrt(p(1-p)/n).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from imgclf import data, models, presets, schemas, tracking
from imgclf.hparams import add, quoted
from imgclf.metrics import binomial_standard_deviation


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(parser, "model-dir", default="/opt/ml/processing/model")
    add(parser, "test-dir", default="/opt/ml/processing/test")
    add(parser, "output-dir", default="/opt/ml/processing/evaluation")
    add(parser, "batch-size", type=quoted(int), default=256)
    add(parser, "top-k", type=quoted(int), default=5, help="k of the top-k accuracy (default 5)")
    return parser.parse_args(argv)


def extract_model(model_dir: Path, scratch: Path) -> Path:
    """Return the folder holding model.pth: ``model_dir`` itself, or ``model.tar.gz`` in it extracted to ``scratch``.

    Extraction uses tarfile's ``data`` filter, which refuses absolute paths, ``..``, links out of the folder and
    device files (PEP 706).
    """
    if (model_dir / "model.pth").is_file():
        return model_dir
    archives = sorted(model_dir.glob("*.tar.gz"))
    if not archives:
        raise FileNotFoundError(f"no model.pth or model.tar.gz in {model_dir}: give the training job's model artifacts")
    with tarfile.open(archives[0]) as archive:
        archive.extractall(scratch, filter="data")
    return scratch


def load_model(folder: Path):
    """Load ``(model in eval mode, classes, model_config)`` from extracted model artifacts."""
    config = json.loads((folder / "model_config.json").read_text(encoding="utf-8"))
    classes = json.loads((folder / "classes.json").read_text(encoding="utf-8"))
    model = models.build_model(config["model"], len(classes))
    model.load_state_dict(torch.load(folder / "model.pth", map_location="cpu", weights_only=True))
    return model.eval(), classes, config


@torch.inference_mode()
def predict(model, loader, top_k: int):
    """Return (true labels, top-1 predictions, top-k hit flags) as 1-D tensors over the whole loader."""
    targets, predictions, top_k_hits = [], [], []
    for images, labels in loader:
        logits = model(images.contiguous(memory_format=torch.channels_last))
        k = min(top_k, logits.size(1))
        top = logits.topk(k, dim=1).indices
        targets.append(labels)
        predictions.append(top[:, 0])
        top_k_hits.append((top == labels[:, None]).any(dim=1))
    return torch.cat(targets), torch.cat(predictions), torch.cat(top_k_hits)


def classification_report(targets: torch.Tensor, predictions: torch.Tensor, classes: list[str]) -> dict:
    """Per-class precision/recall/F1/support, their macro averages and the confusion matrix.

    A class never predicted has precision 0; a class absent from the test set has recall 0 and support 0 and is
    left out of the macro averages (as scikit-learn does with ``labels`` restricted to present classes).
    """
    n = len(classes)
    confusion = torch.zeros(n, n, dtype=torch.int64)
    confusion.index_put_((targets, predictions), torch.ones_like(targets), accumulate=True)
    true_positive = confusion.diag().double()
    support = confusion.sum(1).double()
    predicted = confusion.sum(0).double()
    precision = torch.where(predicted > 0, true_positive / predicted.clamp(min=1), torch.zeros_like(predicted))
    recall = torch.where(support > 0, true_positive / support.clamp(min=1), torch.zeros_like(support))
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), torch.zeros_like(recall))
    present = support > 0
    per_class = {
        name: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
               "support": int(support[i].item())}
        for i, name in enumerate(classes)
    }
    return {
        "per_class": per_class,
        "macro": {"precision": precision[present].mean().item(), "recall": recall[present].mean().item(),
                  "f1": f1[present].mean().item()},
        "confusion_matrix": {"labels": classes, "matrix": confusion.tolist()},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            folder = extract_model(Path(args.model_dir), Path(scratch))
            model, classes, config = load_model(folder)
            test_set = data.ImageFolderDataset(args.test_dir, classes, presets.eval_preset_from_config(config))
        except (FileNotFoundError, ValueError, tarfile.TarError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        model = model.to(memory_format=torch.channels_last)
        loader = DataLoader(test_set, batch_size=args.batch_size, shuffle=False)
        targets, predictions, top_k_hits = predict(model, loader, args.top_k)
    count = len(targets)
    accuracy = (predictions == targets).double().mean().item()
    top_k_accuracy = top_k_hits.double().mean().item()
    report = classification_report(targets, predictions, classes)
    evaluation = {
        schemas.METRICS_SECTION: {
            "accuracy": schemas.metric(accuracy, binomial_standard_deviation(accuracy, count)),
            f"top_{args.top_k}_accuracy": schemas.metric(top_k_accuracy,
                                                         binomial_standard_deviation(top_k_accuracy, count)),
            "macro_precision": schemas.metric(report["macro"]["precision"]),
            "macro_recall": schemas.metric(report["macro"]["recall"]),
            "macro_f1": schemas.metric(report["macro"]["f1"]),
        },
        "per_class": report["per_class"],
        "confusion_matrix": report["confusion_matrix"],
        "test_images": count,
        "model": config["model"],
    }
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / schemas.EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2, ensure_ascii=False),
                                                  encoding="utf-8")
    print(f"test accuracy={accuracy:.4f} top_{args.top_k}_accuracy={top_k_accuracy:.4f} "
          f"macro_f1={report['macro']['f1']:.4f} on {count} images")
    tracking.log_evaluation(evaluation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
