"""User-facing errors: the CLI prints them as one line on stderr and exits with code 2."""

from __future__ import annotations

from collections.abc import Iterable


class BenchmarkError(Exception):
    """An error caused by the user's input or environment, with the fix in its message."""


class UnknownNameError(BenchmarkError, KeyError):
    """A name that is not in a registry."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} '{name}'; valid {kind}s: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DatasetMissingError(BenchmarkError):
    """A dataset that is not on disk and cannot be downloaded."""

    def __init__(self, dataset: str, path: str, how: str, damaged: bool = False):
        self.dataset, self.path, self.how, self.damaged = dataset, path, how, damaged
        state = "is damaged at" if damaged else "not found at"
        super().__init__(f"dataset '{dataset}' {state} {path}: {how}")

    def __reduce__(self):  # across processes (a worker's scenario build)
        return type(self), (self.dataset, self.path, self.how, self.damaged)


class RunsFailed(Exception):
    """Some runs raised (the others ran and have records); ``failures`` holds (record file
    name, error text) pairs. The CLI prints it as one line and exits with code 1."""

    def __init__(self, failures: list[tuple[str, str]], total: int):
        self.failures = failures
        self.total = total
        first = failures[0]
        super().__init__(
            f"{len(failures)} of {total} runs failed (first: {first[0]}: {first[1]}); the "
            "others have records: rerun the command to retry the failed runs"
        )


def brief(err: BaseException) -> str:
    """``Type: message`` on one line (at most 300 characters of message)."""
    from reports.text import one_line  # (lazy: the command line's start-up imports this module)

    return one_line(err, limit=300)
