"""Folders that are replaced whole or not at all: staging, swap, lock and sweep.

``scaffold new``, ``scaffold build``, a project's re-render or update (:func:`scaffold.project.update.commit`)
and a checkpoint save (:func:`scaffold.build.checkpoint.save_checkpoint`) write a folder ``TARGET`` the same
way:

1. take the lock ``.TARGET.lock`` beside it (:func:`locked`); a second writer of the same folder
   waits for it, up to ``SCAFFOLD_LOCK_TIMEOUT`` seconds (default 600), then gives up with an error;
2. sweep what an interrupted run left beside it (:func:`sweep`): staging folders are deleted, and
   a previous folder that was moved aside by a swap that never finished is moved back;
3. write everything into a fresh staging folder ``.TARGET.<kind>-XXXXXXXX`` beside the target (with
   the files to keep hard-linked in, :func:`link_tree`), give the new files the modes the umask says
   (:func:`apply_umask`), flush it to disk (:func:`fsync_tree`), and swap it in
   (:func:`swap_in`): on Linux the two folders are exchanged in one
   ``renameat2(RENAME_EXCHANGE)``; elsewhere the old folder is renamed aside and the staging folder
   renamed into place. Only then is the old one deleted.

A process killed at any moment therefore leaves either the previous folder or the new one, whole,
at ``TARGET`` (without the exchange, possibly the previous one aside, which the next run puts back).
Renames stay on one file system because every temporary folder lives beside the target.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from scaffold.errors import IntegrityError, ProjectError
from scaffold.files import ANSWERS_FILE, BUILD_RECORD

# -- reading state and project files safely -------------------------------------------------------

# Deeper nesting than any record, config or manifest of scaffold holds; deeper JSON is refused before
# Python's parser recurses into it (a RecursionError, not an error a user can read).
MAX_NESTING = 200


def read_bytes_inside(path: str | Path, root: str | Path, *, missing_ok: bool = False) -> bytes | None:
    """The bytes of the regular file ``path``, which must lie inside ``root`` once every link is
    followed; None for a missing file when ``missing_ok``.

    A link leaving ``root`` (to another project, ``~/.ssh``...) is refused, and so is anything but a
    regular file: a FIFO is opened without blocking and refused, never waited on. The errors are
    :class:`IntegrityError` (exit 3) naming the file.
    """
    import stat

    path = Path(path)
    real, top = os.path.realpath(path), os.path.realpath(root)
    if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
        if missing_ok and not os.path.lexists(path):
            return None
        raise IntegrityError(
            f"is a link to {real}, outside {top}; scaffold reads no file through a link that leaves it",
            path=path,
        )
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = (
                "a FIFO"
                if stat.S_ISFIFO(mode)
                else "a folder"
                if stat.S_ISDIR(mode)
                else "a device or socket"
            )
            raise IntegrityError(f"is {kind}, not a regular file", path=path)
        return f.read()


def read_text_inside(path: str | Path, root: str | Path, *, missing_ok: bool = False) -> str | None:
    """:func:`read_bytes_inside` decoded as UTF-8; other bytes are an :class:`IntegrityError` naming
    the file and the byte (never replaced, so nothing is lost when the text is written back)."""

    raw = read_bytes_inside(path, root, missing_ok=missing_ok)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise IntegrityError(
            f"not UTF-8 text (byte {err.start}); scaffold reads and writes UTF-8", path=path
        ) from None


def nesting_depth(text: str) -> int:
    """How deeply ``text`` (JSON, or TOML's inline tables and arrays) nests brackets at most, strings
    skipped: checked before parsing, since Python's parsers recurse once per level."""
    import re as _re

    depth = deepest = 0
    for token in _re.finditer(r'"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|[\[\]{}]', text):
        ch = token.group()
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def loads_json(text: str, path: str | Path) -> object:
    """JSON parsed, nesting bounded: too deep or not JSON is an :class:`IntegrityError` naming ``path``."""

    from scaffold.errors import IntegrityError

    if nesting_depth(text) > MAX_NESTING:
        raise IntegrityError(
            f"nested more than {MAX_NESTING} levels deep; not a file scaffold wrote", path=path
        )
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise IntegrityError(f"not valid JSON: {' '.join(str(err).split())}", path=path) from None


def sha256_file(path: Path) -> str:
    """The sha256 of a file's content, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


LOCK_TIMEOUT_ENV = "SCAFFOLD_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 600.0
# Test hook: SCAFFOLD_FAULT=<point>:kill|stop makes the process SIGKILL or SIGSTOP itself when it
# reaches <point> (see fault_point calls), so tests can interrupt a real run at a known moment.
FAULT_ENV = "SCAFFOLD_FAULT"
LEFTOVER_KINDS = ("build", "new", "update", "ckpt", "old", "trash")
# checkpoint saves of scaffold 0.1.0 named their staging folder .TARGET.ckpt-<pid>-XXXXXXXX and, without
# the atomic exchange, the previous folder moved aside .TARGET.ckpt-<pid>-XXXXXXXX-old; they took no lock
LEGACY_CKPT_RE = re.compile(r"\.ckpt-(\d+)-\w+(-old)?$")


def fault_point(name: str) -> None:
    """Stop or kill this process here if ``SCAFFOLD_FAULT`` names this point (tests only)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, action = spec.partition(":")
    if point != name:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def _lock_timeout() -> float:
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "")
    if not raw.strip():
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ProjectError(
            f"must be a finite number of seconds, 0 or more; got {raw!r}", key=LOCK_TIMEOUT_ENV
        )
    return value


@contextlib.contextmanager
def locked(target: str | Path, *, timeout: float | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of ``target`` (an ``fcntl.flock`` on ``.TARGET.lock`` beside it).

    Waits up to ``timeout`` seconds (default: ``SCAFFOLD_LOCK_TIMEOUT`` or 600) for another scaffold
    process writing the same folder, then raises :class:`ProjectError`. The lock file is removed on
    release; a waiter that then finds the file gone or replaced starts over, so no two holders ever
    overlap.
    """
    target = Path(target)
    path = lock_path(target)
    timeout = _lock_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    told = False
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() >= deadline:
                raise ProjectError(
                    f"another scaffold process{_holder(path)} is writing this folder; waited {timeout:g} s "
                    f"(set {LOCK_TIMEOUT_ENV} to wait longer)",
                    path=target,
                ) from None
            if not told:
                print(
                    f"waiting for another scaffold process{_holder(path)} writing {target} ...",
                    file=sys.stderr,
                )
                told = True
            time.sleep(0.1)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder we waited for removed the file: lock the new one
            os.close(fd)
            continue
        break
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def leftovers(target: Path) -> dict[str, list[Path]]:
    """What interrupted runs left beside ``target``, by kind (:data:`LEFTOVER_KINDS`)."""
    found: dict[str, list[Path]] = {kind: [] for kind in LEFTOVER_KINDS}
    if not target.parent.is_dir():
        return found
    for kind in LEFTOVER_KINDS:
        found[kind] = sorted(target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"))
    return found


def sweep(target: str | Path) -> list[str]:
    """Clean up after interrupted runs; call it holding :func:`locked`. Returns what it did, in words.

    A previous folder moved aside by a swap that never finished (``.TARGET.old-*``) is moved back when
    ``TARGET`` is missing; staging folders and anything else left over are deleted, with what
    interrupted writes into them left beside them (a checkpoint saved into a build's staging folder).
    Leftovers of scaffold 0.1.0's checkpoint saves (:data:`LEGACY_CKPT_RE`) are swept too, unless the
    process named in them still runs.
    """
    target = Path(target)
    found = leftovers(target)
    done: list[str] = []
    ckpt = []
    for p in found["ckpt"]:
        legacy = LEGACY_CKPT_RE.search(p.name)
        if legacy and int(legacy.group(1)) != os.getpid() and pid_alive(int(legacy.group(1))):
            continue  # a save of scaffold 0.1.0 in progress
        (found["old"] if legacy and legacy.group(2) else ckpt).append(p)
    olds = sorted(found["old"], key=lambda p: p.stat().st_ctime)
    if olds and not target.exists():
        olds.pop().rename(target)
        done.append(f"restored {target} from an interrupted swap")
    for p in olds + found["build"] + found["new"] + found["update"] + ckpt + found["trash"]:
        for q in [p, *p.parent.glob(f".{glob.escape(p.name)}.*")]:
            _remove(q)
            done.append(f"removed leftover {q.name}")
    return done


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: into a temporary file beside it, flushed, then
    renamed over it. A failure (a full disk, permissions) is a :class:`FileAccessError` naming the
    path and the operation, and leaves any previous file as it was, never a 0-byte one."""
    from scaffold.errors import file_access_error

    path = Path(path)
    if path.is_dir():
        raise ProjectError("is a folder; give a file name", path=path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        if err.filename is None or err.filename == tmp:
            err.filename = str(path)
        raise file_access_error(err, "write") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def make_staging(target: Path, kind: str) -> Path:
    """A new empty folder beside ``target`` for ``kind`` (one of :data:`LEFTOVER_KINDS`: build, new,
    update, ckpt), readable as the umask says."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=target.parent))
    staging.chmod(0o777 & ~current_umask())
    return staging


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(folder: Path, *, files: Iterable[str | Path] | None = None, like: Path | None = None) -> None:
    """Give ``folder`` and everything in it the modes the user's umask says.

    Some writers ignore the umask (safetensors creates files 0600, Copier copies the template's modes);
    executable files stay executable. ``files``: only these (paths in ``folder``), the files written
    anew, where the others are hard links to files kept from the previous folder (whose modes are the
    user's). ``like``: ``folder`` takes the mode of this folder (the one it replaces) instead.
    """
    mask = current_umask()
    folder.chmod((like.stat().st_mode & 0o7777) if like is not None else (0o777 & ~mask))
    for p in folder.rglob("*") if files is None else (folder / f for f in files):
        if not p.is_symlink():
            executable = p.is_dir() or p.stat().st_mode & 0o111
            p.chmod((0o777 if executable else 0o666) & ~mask)


def fsync_tree(folder: Path, *, files: Iterable[str | Path] | None = None) -> None:
    """Flush every file and folder under ``folder`` to disk, so a swap never exposes unwritten data.

    ``files``: flush only these (paths in ``folder``; hard links to files already on disk need no
    flush), and every folder.
    """
    for path in _files(folder) if files is None else (folder / f for f in files):
        if path.is_file() and not path.is_symlink():
            _fsync(path)
    for dirpath, _dirs, _names in os.walk(folder):
        _fsync_dir(Path(dirpath))


def _files(folder: Path) -> Iterator[Path]:
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            yield Path(dirpath, name)


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link ``src`` at ``dst`` (a copy where the file system cannot link); a symlink is copied as
    a symlink."""
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_tree(src: Path, staging: Path, *, skip: Callable[[str], bool] = lambda name: False) -> None:
    """Put what ``src`` holds into the (existing) ``staging`` folder as hard links, so it costs nothing
    and unchanged files stay the same inodes; the entries of ``src`` whose name ``skip`` says are left
    out (what the new folder will not keep, or will write anew)."""
    shutil.copytree(
        src,
        staging,
        symlinks=True,
        copy_function=link_or_copy,
        dirs_exist_ok=True,
        ignore=lambda d, names: [n for n in names if skip(n)] if Path(d) == src else [],
    )


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
        _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap the folders ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the system or file system cannot; the caller then renames in two steps.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def swap_in(staging: Path, target: Path, *, keep_old: Path | None = None, faults: str = "") -> None:
    """Move a complete ``staging`` folder to ``target``, replacing what was there only at the end.

    On Linux the two folders are exchanged in one step, so ``target`` is never missing; elsewhere the
    old folder is renamed aside first, and :func:`sweep` puts it back if the process dies before the
    new one is in place. The old folder is deleted, or renamed to ``keep_old`` when given (a backup).
    ``faults``: a prefix of this swap's fault points (``checkpoint-``: ``checkpoint-swap``...), so a
    test can stop one write and not another nested in it.
    """
    old = target.with_name(f".{target.name}.old-{staging.name[-8:]}")
    if target.exists() and exchange(staging, target):
        staging.rename(old)  # staging now holds the previous folder
    else:
        if target.exists():
            target.rename(old)
        else:
            old = None
        fault_point(f"{faults}swap")  # the old folder is aside and the new one not yet in place
        try:
            staging.rename(target)
        except BaseException:
            if old is not None:
                old.rename(target)
            raise
    _fsync_dir(target.parent)
    if old is not None:
        fault_point(f"{faults}swapped")
        if keep_old is not None:
            old.rename(keep_old)
            return
        trash = target.with_name(f".{target.name}.trash-{staging.name[-8:]}")
        old.rename(trash)  # an .old-* folder is always whole; only .trash-* is ever half deleted
        shutil.rmtree(trash, ignore_errors=True)


PROJECT_MARKERS = ("scaffold.toml", ANSWERS_FILE)  # what `scaffold new` always writes
CHECKPOINT_MARKERS = (
    "model.safetensors",
    "config.json",
)  # a checkpoint, or a model directory to save one into
LISTED = 5  # entries named when a folder is refused


def is_build_dir(path: Path) -> bool:
    """Whether ``path`` holds a valid build record: ``scaffold-build.json`` parses, and every file in
    the folder is one the record lists (contents may be stale; recorded files may be missing)."""

    try:
        stamp = json.loads((path / BUILD_RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    files = stamp.get("files") if isinstance(stamp, dict) else None
    if not isinstance(files, dict):
        return False

    return files_on_disk(path) <= set(files)


def is_project_dir(path: Path) -> bool:
    """Whether ``path`` is a project folder written by ``scaffold new`` (manifest and answers file)."""
    return all((path / name).is_file() for name in PROJECT_MARKERS)


def check_replaceable(
    path: str | Path,
    *,
    accept: str = "build",
    protect: tuple[str | Path, ...] = (),
    option: str = "",
    contents: bool = True,
) -> None:
    """Refuse to replace ``path`` unless scaffold wrote it; ``--force`` never widens this rule.

    ``path`` may be replaced when it does not exist, is an empty folder, or is what scaffold writes
    there (``accept``): ``"build"``, a model directory with a valid build record (:func:`is_build_dir`);
    ``"project"``, a project folder (:func:`is_project_dir`); ``"checkpoint"``, a folder holding a
    checkpoint or a model directory (``config.json``), whose other files a save keeps. Never ``/``, a home directory, a file, or a folder that is or holds one of
    ``protect`` (the project being built) or any scaffold project. ``option`` (a flag) is named in the
    error; ``contents=False`` checks only where the folder is, not what it holds. Raises
    :class:`ProjectError` naming the folder and what is in it.
    """
    path = Path(path)
    where = f"{option} {path}" if option else str(path)

    def refuse(why: str) -> ProjectError:
        return ProjectError(f"{why}; scaffold only replaces folders it wrote, --force included", path=where)

    resolved = path.resolve()
    homes = {Path.home().resolve(), *(p.resolve() for p in Path("/home").glob("*") if p.is_dir())}
    if resolved == Path(resolved.anchor) or resolved in homes:
        raise refuse("is the root or a home directory")
    for p in protect:
        p = Path(p).resolve()
        if resolved == p or resolved in p.parents:
            raise refuse(f"is or holds the project folder {p}")
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise refuse("exists and is not a folder")
    if not contents:
        return
    try:
        entries = sorted(path.iterdir())
    except OSError as err:
        raise ProjectError(f"cannot list the folder: {err.strerror or err}", path=where) from None
    if not entries:
        return
    if accept == "project" and is_project_dir(path):
        return
    if accept in ("build", "checkpoint") and is_build_dir(path):
        return
    if accept == "checkpoint" and any(
        e.name in CHECKPOINT_MARKERS or e.name.endswith(".safetensors.index.json") for e in entries
    ):
        return
    if accept != "project" and is_project_dir(path):
        raise refuse("is a scaffold project, not a model directory")
    if any(is_project_dir(e) for e in entries if e.is_dir()):
        raise refuse("holds scaffold projects")
    names = [e.name + ("/" if e.is_dir() else "") for e in entries]
    listed = ", ".join(names[:LISTED]) + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")
    what = {
        "build": f"a model directory with a valid {BUILD_RECORD}",
        "project": "a project made by `scaffold new`",
        "checkpoint": "a checkpoint or a model directory",
    }[accept]
    raise refuse(f"holds files scaffold did not write ({listed}); it is not {what}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one of another user's counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no pid is that large
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# Scratch folders in the system's temporary directory
# ---------------------------------------------------------------------------------------------

# What scaffold creates under tempfile.gettempdir() and deletes when done: a multi-process run's job
# folder (dist), a variant built for `scaffold test` (test), a rendering to compare or merge (render,
# edits), `scaffold show`'s model directory (show). Each is named scaffold-KIND-PID-XXXXXXXX after the
# process that made it: a process killed before it deleted its folder leaves it, and the next scaffold
# run deletes it (sweep_scratch) once no process of that pid runs. A live run's folders are never touched.
SCRATCH_KINDS = ("dist", "test", "render", "edits", "show")
SCRATCH_RE = re.compile(rf"^scaffold-({'|'.join(SCRATCH_KINDS)})-(\d+)-[A-Za-z0-9_]{{8}}$")


def make_scratch(kind: str) -> Path:
    """A new folder ``scaffold-KIND-PID-XXXXXXXX`` in the temporary directory, for the caller to delete;
    what killed runs left is swept first (:func:`sweep_scratch`)."""
    if kind not in SCRATCH_KINDS:
        raise ValueError(f"unknown scratch kind {kind!r}")
    sweep_scratch()
    return Path(tempfile.mkdtemp(prefix=f"scaffold-{kind}-{os.getpid()}-"))


@contextlib.contextmanager
def scratch_dir(kind: str) -> Iterator[Path]:
    """:func:`make_scratch`, deleted on leaving (also on an exception, and on SIGTERM or SIGHUP, which
    the command line turns into one)."""
    tmp = make_scratch(kind)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sweep_scratch(root: str | Path | None = None) -> list[Path]:
    """Delete the scratch folders (:data:`SCRATCH_RE`) in ``root`` (default: the temporary directory)
    whose process no longer runs; returns them. Folders of a running process, of another user, and
    anything not named as scaffold names its folders are left alone."""
    root = Path(root if root is not None else tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        found = SCRATCH_RE.match(entry.name)
        if not found:
            continue
        pid = int(found.group(2))
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_dir(follow_symlinks=False) or (uid is not None and st.st_uid != uid):
            continue
        if pid == os.getpid() or pid_alive(pid):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


IGNORED_DIRS = ("__pycache__",)  # Python writes these next to modules it imports


def files_on_disk(path: Path) -> set[str]:
    """Every file under ``path`` (relative, posix), leaving out the record and Python's caches."""
    out = set()
    for p in path.rglob("*"):
        rel = p.relative_to(path)
        if p.is_file() and rel.as_posix() != BUILD_RECORD and not set(rel.parts) & set(IGNORED_DIRS):
            out.add(rel.as_posix())
    return out
