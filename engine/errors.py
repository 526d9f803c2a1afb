"""The one exception type users see: a message that says where, and what to do."""

from __future__ import annotations


class UserError(Exception):
    """Bad usage, config or data. The CLI prints it as one paragraph and exits 2.

    Args:
        message: what is wrong, naming the file, line or key.
        fix: what the user should do about it.
    """

    exit_code = 2

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    FIX = "\n  fix: "

    def __str__(self) -> str:
        return f"{self.message}{self.FIX}{self.fix}" if self.fix else self.message

    @classmethod
    def from_text(cls, text: str) -> UserError:
        """The error back from its ``str`` (a run log's ``end`` message, written by another process)."""
        message, _, fix = text.partition(cls.FIX)
        return cls(message, fix)

    @classmethod
    def several(
        cls,
        errors: list[UserError],
        what: str = "problems",
        fix: str = "fix each one above (the arrow says how)",
    ) -> UserError:
        """One error for all of ``errors``: the one alone, or each with its fix, in order."""
        if len(errors) == 1:
            return errors[0]
        body = "\n".join(f"  {e.message}" + (f"\n      -> {e.fix}" if e.fix else "") for e in errors)
        return cls(f"{len(errors)} {what}:\n{body}", fix)
