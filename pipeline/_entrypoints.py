"""Make ``entrypoints/`` importable as the ``imgclf`` package for the few shared constants and schemas.

The scripts never import ``pipeline``; ``pipeline`` reads their contracts (schemas, metric regexes) from them so
that each contract is written once.
"""

import sys
from pathlib import Path

ENTRYPOINTS_DIR = Path(__file__).resolve().parent.parent / "entrypoints"

if str(ENTRYPOINTS_DIR) not in sys.path:
    sys.path.insert(0, str(ENTRYPOINTS_DIR))
