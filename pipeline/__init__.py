"""Image-classification pipeline for Amazon SageMaker Pipelines: build, run in AWS, or run locally.

Importing the package puts ``entrypoints/`` on ``sys.path`` (:mod:`pipeline._entrypoints`), once for every module
of ``pipeline`` and ``steps``: they read the container scripts' contracts from ``imgclf`` (schemas, metric
regexes, hyperparameter names) and the deploy Lambda's names from ``deploy_endpoint``, so that each is written
once; the scripts never import ``pipeline``. ``entrypoints/`` stays a folder of scripts (the jobs' source directory
and the Lambda's package) rather than an installed distribution, which would put ``train``, ``split`` and ``debug``
on the import path of every program in the environment.
"""

from pipeline import _entrypoints  # noqa: F401
