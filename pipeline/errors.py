"""The project's error for problems the user can fix: every command prints it without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad config, missing file, missing credential): printed without a traceback.

    The message names the problem and the fix; ``pipeline.cli.main`` prints it and exits with status 2.
    """
