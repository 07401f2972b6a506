"""The one error type piperctl raises for problems a user can fix."""

from __future__ import annotations

import errno


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


_OS_HINTS = {
    errno.ENOSPC: "free some disk space and run the command again",
    errno.EDQUOT: "your disk quota is used up: free some space and run the command again",
    errno.EACCES: "check the permissions of that path, or choose a folder you can write to",
    errno.EPERM: "check the permissions of that path, or choose a folder you can write to",
    errno.EROFS: "that filesystem is read-only: choose another folder",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of that path is a file, not a folder: check the path",
    errno.EISDIR: "that path is a folder: give a file",
    errno.ELOOP: "a symbolic link there points to itself: remove or fix the link",
    errno.EIO: "the disk reported an I/O error: check the device",
}


def from_os_error(e: OSError) -> PiperctlError:
    """An OSError (no permission, disk full, read-only, missing path, ...) as one line naming the path."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    what = e.strerror or str(e) or type(e).__name__
    message = f"{where}: {what}" if where else what
    return PiperctlError(
        message[0].lower() + message[1:] if message else message, hint=_OS_HINTS.get(e.errno or 0)
    )


# The optional extra of pyproject.toml that brings each package piperctl may need beyond its core.
EXTRAS = {"peft": "vla", "transformers": "vla", "num2words": "vla"}


def require_extra(module: str, what: str) -> None:
    """Refuse in one line when `module` (an optional dependency) is not installed, naming its extra."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        extra = EXTRAS.get(module, "vla")
        raise PiperctlError(
            f"{what} needs the {module} package, which is not installed",
            hint=f"pip install 'piperctl[{extra}]'",
        )
