"""Image-classification pipeline for Amazon SageMaker Pipelines: build, run in AWS, or run locally."""
