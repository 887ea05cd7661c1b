"""Errors that trimtab reports to the user instead of a traceback.

Every error caused by bad input names where the problem is (file, line, field) so that the
user can fix it without guessing. The CLI turns these into exit status 2.
"""

from __future__ import annotations

from dataclasses import dataclass

# A training process stopped on request (the jobs API's pause), to be resumed: EX_TEMPFAIL.
# Here, not beside TrainingPaused, so that the CLI and the scheduler read it without torch.
PAUSED_EXIT = 75


class TrimtabError(Exception):
    """Base class for errors that are the user's to fix (bad input, bad options)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input: where it is and what is wrong."""

    message: str
    file: str | None = None
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        what = f"field '{self.field}': " if self.field is not None else ""
        return f"{where}{what}{self.message}"


class DataError(TrimtabError):
    """One or more problems in input data files; each names its file, line and field."""

    def __init__(self, problems: list[Problem] | Problem, *, more: int = 0):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        self.more = more
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [str(p) for p in self.problems]
        if self.more:
            lines.append(f"... and {self.more} more problem(s) of the same kind")
        return "\n".join(lines)


MAX_PROBLEMS = 20  # problems listed before summarising the rest


class ProblemList:
    """Collects problems so that one run reports many of them (the first MAX_PROBLEMS, then a
    count), not only the first; ``raise_if_any`` raises them together as a DataError."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.more = 0

    def add(self, problem: Problem) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(problem)
        else:
            self.more += 1

    def raise_if_any(self) -> None:
        if self.items:
            raise DataError(self.items, more=self.more)


class ConfigError(TrimtabError):
    """Invalid options or configuration; lists every problem found, not just the first."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class OutputExistsError(TrimtabError):
    """The output would overwrite existing files and --force was not given."""
