"""User-facing errors: one clear sentence, exit code 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """An expected mistake by the user (bad file, unknown name, impossible budget).

    The message is one sentence naming the file / layer / field and what to do. The CLI prints
    it without a traceback and exits with ``exit_code`` (2 = usage error).
    """

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class BudgetError(UserError):
    """No plan can meet a budget; the message names the budget and the smallest achievable value."""
