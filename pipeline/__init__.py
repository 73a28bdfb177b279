"""Image-classification pipeline for Amazon SageMaker Pipelines: build, run in AWS, or run locally."""

import logging as _logging

# The SDK's "sagemaker.config" logger prints INFO lines to stdout on import (they would corrupt `definition`'s
# JSON): quiet it before any module imports sagemaker.
_logging.getLogger("sagemaker.config").setLevel(_logging.WARNING)
_logging.getLogger("sagemaker.config").addHandler(_logging.NullHandler())
