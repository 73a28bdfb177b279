"""Code shared by the scripts that run inside the SageMaker containers (split, train, debug, evaluate, inference).

Nothing here imports ``pipeline``: this folder is the ``source_dir`` of every job and is copied into the model
archive's ``code/`` folder, so it must stand on its own.
"""
