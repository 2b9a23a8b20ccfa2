"""The one error hierarchy of scaffold.

Every error a user can cause is a :class:`ScaffoldError`. The CLI prints it as one line (or one line
per problem, for a manifest with several) and exits with the class's exit code; ``--debug`` shows the
traceback instead. Exit codes:

====  ==========================================================
1     internal error (a bug in scaffold: please report it)
2     usage: bad flags, manifest, names, blueprints, devices
3     integrity: corrupt, incomplete or mismatched files on disk
4     test failure: ``scaffold test`` found a non-finite loss or gradient
====  ==========================================================
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_TEST_FAILURE = 4


def one_line(err: BaseException, limit: int = 300) -> str:
    """A library's error message as one line (whitespace collapsed, at most ``limit`` characters)."""
    return " ".join(str(err).split())[:limit]


class ScaffoldError(Exception):
    """Base of all errors a user can cause; ``str(err)`` is the message shown."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, path: str | Path | None = None, key: str | None = None):
        self.path = str(path) if path is not None else None
        self.key = key
        self.message = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = ": ".join(p for p in (self.path, self.key) if p)
        return f"{where}: {self.message}" if where else self.message


class UsageError(ScaffoldError):
    """A flag, name or option that cannot be used as given."""


class ManifestError(UsageError):
    """One or more problems in a manifest; each problem names its TOML key path."""

    def __init__(self, problems: Iterable[tuple[str, str]], *, path: str | Path | None = None):
        self.problems = list(problems)
        self.path = str(path) if path is not None else None
        self.key = self.problems[0][0] if self.problems else None
        where = f"{self.path}: " if self.path else ""
        self.message = "\n".join(
            f"{where}{key}: {msg}" if key else f"{where}{msg}" for key, msg in self.problems
        )
        Exception.__init__(self, self.message)

    def _format(self) -> str:  # pragma: no cover - the message is built in __init__
        return self.message


class BlueprintError(UsageError):
    """A blueprint that is missing, malformed or asks for something scaffold will not do."""


class ProjectError(UsageError):
    """A project folder that is missing, incomplete, or would be overwritten."""


class DeviceError(UsageError):
    """A device or dtype that does not exist on this machine."""


class DataError(UsageError):
    """A dataset or tokenizer input that cannot be used."""


class FileAccessError(UsageError):
    """A file or folder scaffold cannot read or write (permissions, a full disk, a read-only system)."""


def file_access_error(err: OSError, operation: str | None = None) -> FileAccessError:
    """An OSError from the system as one line naming the path and the operation that failed."""
    import errno

    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EFBIG: "file too large (the file size limit or the disk is full)",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
    }.get(err.errno, err.strerror or str(err))
    if operation is None:
        operation = (
            "write" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS) else "access"
        )
    where = err.filename if err.filename is not None else None
    if err.filename2 is not None:
        where = f"{err.filename} -> {err.filename2}"
    return FileAccessError(f"cannot {operation}: {reason}", path=where)


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OSError raised while writing into ``path`` into a :class:`FileAccessError` naming the
    file (or ``path`` when the system did not say which) and the operation."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            err.filename = str(path)
        raise file_access_error(err, "write") from None


class IntegrityError(ScaffoldError):
    """Files on disk that are corrupt, incomplete, or do not match what was recorded.

    Either one message (``path``, ``key``) or several ``problems``, each a (file, message) pair shown
    on its own line.
    """

    exit_code = EXIT_INTEGRITY

    def __init__(
        self,
        message: str = "",
        *,
        path: str | Path | None = None,
        key: str | None = None,
        problems: Iterable[tuple[str | Path, str]] = (),
    ):
        self.problems = [(str(p), m) for p, m in problems]
        if message or not self.problems:
            super().__init__(message, path=path, key=key)
            return
        self.path, self.key = self.problems[0][0], key
        self.message = "\n".join(f"{p}: {m}" for p, m in self.problems)
        Exception.__init__(self, self.message)


class CheckpointError(IntegrityError):
    """A checkpoint that cannot be loaded into the model as asked."""


class TestFailure(ScaffoldError):
    """``scaffold test`` saw the model misbehave (a non-finite loss or gradient)."""

    __test__ = False  # not a pytest test class
    exit_code = EXIT_TEST_FAILURE


def model_code_error(err: BaseException) -> UsageError | None:
    """An exception raised inside a model's own code as transformers imported it (its copy under
    ``transformers_modules``: the project's modeling or configuration file) as a usage error naming
    that file and line; None when the model's code is not where it was raised."""
    found = None
    tb = err.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if "transformers_modules" in Path(filename).parts:
            found = (Path(filename).name, tb.tb_lineno)
        tb = tb.tb_next
    if found is None:
        return None
    name, line = found
    return UsageError(
        f"the model's own code raised {type(err).__name__}: {one_line(err)} (fix it in the project's {name}, "
        "then build again)",
        path=f"{name}:{line}",
    )
