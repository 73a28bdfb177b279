"""The pipeline's steps, one builder module per step (``pipeline.build`` assembles them)."""

import pipeline  # noqa: F401  (puts entrypoints/ on sys.path: the builders read imgclf's contracts)
