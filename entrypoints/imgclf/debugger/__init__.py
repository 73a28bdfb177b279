"""SageMaker Debugger for every account: the smdebug hook, a system-utilization sampler and the rules.

- ``hook.DebugSession``: the smdebug hook that ``train.py`` attaches (managed hook config when SageMaker gives one,
  otherwise a small default set of collections).
- ``profiler.SystemMonitor``: CPU, memory and GPU samples plus data-loading vs compute time per step.
- ``rules``: VanishingGradient, Overfit, Overtraining, PoorWeightInitialization, LossNotDecreasing as
  ``smdebug.rules.Rule`` subclasses, and the profiler rules LowGPUUtilization and CPUBottleneck.
- ``runner``: runs them over a training job's output and builds ``debug.json``.

smdebug is optional at import everywhere: without it training still runs and the rules report ``Skipped``.
"""
