"""Errors a user can cause. Raised where detected; only the CLI turns them into a message + exit code."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input or options: one line, exit code 2, no traceback."""

    exit_code = 2


class ValidationError(UserError):
    """Several problems found in one pass over a data folder; each is reported on its own line."""

    def __init__(self, problems: list[str], what: str = "data check"):
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(f"{what} failed: {n} problem{'s' if n != 1 else ''}")
