"""The one error type piperctl raises for problems a user can fix."""

from __future__ import annotations


class PiperctlError(Exception):
    """An expected failure: the CLI prints it as one line on stderr and exits with `exit_code`."""

    exit_code: int = 2
    # Set on the other ranks of a multi-process run when one rank already reports the same error.
    silent: bool = False

    def __init__(
        self, message: str, *, hint: str | None = None, exit_code: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # A stable name for the kind of problem, where reports (checkpoints verify) need one.
        self.code = code
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message
