"""Errors a user can cause. Raised where detected; only the CLI turns them into a message + exit code."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input or options: one line, exit code 2, no traceback."""

    exit_code = 2


class ValidationError(UserError):
    """Several problems found in one pass over a data folder; each is reported on its own line."""

    MAX_SHOWN = 20

    def __init__(self, problems: list[str], what: str = "data check", cause: str | None = None):
        self.problems = list(problems)
        self.cause = cause  # one line on the likely cause when most problems share it
        n = len(self.problems)
        super().__init__(f"{what} failed: {n} problem{'s' if n != 1 else ''}")

    def lines(self) -> list[str]:
        """What the user reads: the likely cause, then at most MAX_SHOWN problems."""
        shown = self.problems[: self.MAX_SHOWN]
        more = len(self.problems) - len(shown)
        return ([self.cause] if self.cause else []) + shown + ([f"... and {more} more"] if more else [])
