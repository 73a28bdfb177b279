"""Cost of one pipeline execution (and of the endpoint per month) from a dated price table.

Prices: ``pipeline/prices.yaml`` (on-demand, USD per instance-hour, with its ``as_of`` date and source).
Durations: the ``estimate`` section of ``pipeline.yaml`` (minutes per job; measure yours and put them there).
Tuning is an upper bound: every one of ``tuning.max_jobs`` jobs is counted for the full duration, while early
stopping ends some sooner. Spot training (``training.spot``) is priced on demand too: spot saves up to 90%
(AWS's figure) but the saving varies. The deploy Lambda and S3 storage are not counted (cents).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.config import Config
from pipeline.errors import UserError

PRICES_PATH = Path(__file__).resolve().parent / "prices.yaml"


@dataclass(frozen=True)
class Line:
    """One job of the estimate: ``instances`` x ``hours`` at ``price`` USD per instance-hour."""

    item: str
    instance_type: str
    instances: int
    hours: float
    price: float

    @property
    def cost(self) -> float:
        return self.instances * self.hours * self.price


@dataclass(frozen=True)
class Estimate:
    lines: list[Line]
    wall_hours: float
    endpoint_monthly: float | None
    as_of: str
    source: str
    notes: list[str]

    @property
    def total(self) -> float:
        return sum(line.cost for line in self.lines)


def load_prices(path: Path = PRICES_PATH) -> dict:
    """The price table (``as_of``, ``region``, ``source`` and per-scope ``{instance type: USD/hour}``)."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _price(prices: dict, scope: str, instance_type: str) -> float:
    table = prices.get(scope, {})
    if instance_type not in table:
        raise UserError(
            f"no {scope} price for {instance_type} in {PRICES_PATH.name} (as of {prices.get('as_of')}). "
            f"Fix: add it from {prices.get('source')}; known: {', '.join(sorted(table))}"
        )
    return float(table[instance_type])


def estimate(config: Config, prices: dict | None = None) -> Estimate:
    """Estimate one execution of the default parameters; raises UserError for an instance type not priced."""
    prices = prices or load_prices()
    minutes = config.estimate
    inst = config.instances
    tuning = config.tuning
    processing = _price(prices, "processing", inst.processing_type)
    training = _price(prices, "training", inst.training_type)
    lines = [
        Line("split", inst.processing_type, inst.processing_count, minutes.split_minutes / 60, processing),
        Line(f"tune ({tuning.max_jobs} jobs, at most)", inst.training_type, tuning.max_jobs,
             minutes.tuning_job_minutes / 60, training),
        Line("train", inst.training_type, inst.training_count, minutes.training_minutes / 60, training),
        Line("debug", inst.processing_type, inst.processing_count, minutes.debug_minutes / 60, processing),
        Line("evaluate", inst.processing_type, inst.processing_count, minutes.evaluate_minutes / 60, processing),
    ]  # fmt: skip
    rounds = math.ceil(tuning.max_jobs / tuning.max_parallel_jobs)
    wall = (
        minutes.split_minutes
        + rounds * minutes.tuning_job_minutes
        + minutes.training_minutes
        + max(minutes.debug_minutes, minutes.evaluate_minutes)
    ) / 60
    endpoint = None
    if config.deploy.enabled:
        stages = (config.deploy.stages.staging, config.deploy.stages.production)
        endpoint = sum(
            _price(prices, "hosting", stage.instance_type) * stage.initial_instance_count
            for stage in stages
        ) * minutes.endpoint_hours_per_month
    notes = []
    if config.region != prices.get("region"):
        notes.append(f"prices are for {prices.get('region')}; {config.region} differs (usually by a few percent)")
    if config.training.spot:
        notes.append("spot training is on: tune and train may cost up to 90% less than shown")
    if config.debugger.managed:
        notes.append("managed Debugger built-in rules run at no extra charge (AWS); the debug step is counted")
    return Estimate(lines, wall, endpoint, str(prices.get("as_of")), str(prices.get("source")), notes)


def render(result: Estimate) -> str:
    """A plain-text table of ``result`` (columns: job, instance type, count, hours, USD)."""
    rows = [f"{'job':<26} {'instance type':<16} {'count':>5} {'hours':>7} {'USD':>9}"]
    for line in result.lines:
        rows.append(
            f"{line.item:<26} {line.instance_type:<16} {line.instances:>5} {line.hours:>7.2f} {line.cost:>9.2f}"
        )
    rows.append(f"{'one execution':<26} {'':<16} {'':>5} {'':>7} {result.total:>9.2f}")
    rows.append(f"wall time of one execution: about {result.wall_hours:.1f} h (tuning rounds run in parallel)")
    if result.endpoint_monthly is not None:
        rows.append(f"endpoints (staging + production) while they run: {result.endpoint_monthly:.2f} USD per month")
    rows.append(f"prices: on-demand, as of {result.as_of}, {result.source}")
    rows.extend(f"note: {note}" for note in result.notes)
    return "\n".join(rows)
