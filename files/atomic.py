"""Atomic file writes (write beside the target, then rename over it) and the up-front check of output paths.

An interrupted or failed write never leaves a half-written file under the final name (a reader sees the old file
or the new one), and the published file gets the permissions a plainly created file would (the temporary file's
own are 0600). The temporary file is hidden and ends in ``.tmp``, so one left behind by a kill is never listed by
ComfyUI (whose lists go by extension: ``.safetensors``, ``.mp4`` ...); a writer that picks the format from the file
name must therefore be told the format (``media_io.write_mp4`` passes ``format="mp4"``).

``check_output_path`` checks an output before any long work starts: writable, not a folder where a file goes (or a
file where a folder goes), and not one of the command's input files, whatever spelling or link leads to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

# Ending of every temporary file (never an extension a file list shows); the name also starts with "." (hidden).
TEMPORARY_SUFFIX = ".tmp"


class OutputPathError(ValueError):
    """An output path that cannot be written as asked (or would overwrite an input), found before any work starts;
    the message names the argument, the path, what was expected and what was found."""


def default_file_mode() -> int:
    """Permissions a plainly created file gets under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write to; on success it is flushed to disk and renamed over
    ``path``, on any error (interruption included) it is removed and ``path`` is left as it was. The folder is
    created if needed. An ``OSError`` about the temporary file is raised again naming ``path`` (the user's name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)      # its errors name the folder, as they should
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    except OSError as error:
        raise _naming(error, path) from error
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        _fsync_file(tmp)               # the data reaches the disk before the name points at it
        os.replace(tmp, path)
        _fsync_folder(path.parent)     # and the rename itself survives a power cut
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError) and tmp in (error.filename, error.filename2):
            raise _naming(error, path) from error
        raise


def _naming(error: OSError, path: Path) -> OSError:
    """The same error (same OSError subclass, through its errno) naming ``path`` instead of the temporary file."""
    if error.errno is None:
        return OSError(f"{path}: {error}")
    return OSError(error.errno, error.strerror or str(error), os.fspath(path))


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """fsync a folder where the OS allows it (POSIX); Windows cannot open a folder, and its rename is durable."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass                           # some file systems refuse fsync on a folder: the rename is done anyway
    finally:
        os.close(fd)


def is_hidden_or_temporary(name: str | os.PathLike) -> bool:
    """True for a file list entry that is not a user's file: any part of the (relative) name starts with '.' (a
    hidden file or folder, such as ``atomic_path``'s temporary files) or the name ends in ``.tmp``."""
    parts = Path(name).parts
    return any(part.startswith(".") for part in parts) or os.fspath(name).endswith(TEMPORARY_SUFFIX)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)


def check_output_path(path: str | os.PathLike | None, what: str, *, folder: bool = False,
                      suffixes: Sequence[str] = (), inputs: Mapping[str, str | os.PathLike | None] | None = None,
                      writes: Sequence[str] = (), parent_must_exist: bool = False) -> Path:
    """Check, before any long work, that an output can be written where asked; -> ``Path(path)``.

    what: how the caller named the output (``--out``, ``output``), quoted in every message.
    folder: the output is a folder (created with its parents if missing) instead of a file.
    suffixes: accepted file-name endings, lower case with the dot (``(".mp4",)``); empty: any.
    inputs: ``{name: path}`` of files the command reads (None entries are skipped); the output (for a folder: each
        of ``writes`` inside it) must not be one of them, through any spelling, symlink or hard link.
    writes: for a folder, the names of the files written in it: none may be a folder or one of ``inputs``.
    parent_must_exist: the folder holding a file output must already exist (otherwise it is created).
    The folder written in (or its nearest existing parent) must take a new file: checked by creating and removing
    a hidden temporary file there, the only test that holds for read-only mounts, ``/proc``, ACLs and root alike.
    Raises ``OutputPathError``.
    """
    text = os.fspath(path) if path is not None else ""
    kind = "folder" if folder else "file"
    if not str(text).strip():
        raise OutputPathError(f"{what}: expected a {kind} path, got {text!r}")
    if "\0" in str(text):  # no file system takes it, and Path.exists() answers False instead of failing
        raise OutputPathError(f"{what} {text!r}: expected a {kind} path, got one with a NUL character")
    target = Path(text)
    if folder:
        if target.exists() and not target.is_dir():
            raise OutputPathError(f"{what} {text}: is a file; expected a folder (created if missing)")
        _check_can_create_in(target, what, text, must_exist=False)
        outputs = [target / name for name in writes]
        for output in outputs:
            if output.is_dir():
                raise OutputPathError(f"{what} {text}: {output.name} in it is a folder; expected a file path there "
                                      "(this command writes that file)")
    else:
        if target.is_dir():
            raise OutputPathError(f"{what} {text}: is a folder; expected a file path"
                                  + (f" ending in {suffixes[0]}" if suffixes else ""))
        outputs = [target]
    for output in outputs:
        for name, source in (inputs or {}).items():
            if source is not None and _same_file(output, source):
                which = "is" if output is target else f"would overwrite (with {output.name})"
                raise OutputPathError(f"{what} {text}: {which} the {name} file {os.fspath(source)}; expected an "
                                      "output distinct from every input, so the input is not lost")
    if not folder:
        if suffixes and target.suffix.lower() not in suffixes:
            raise OutputPathError(f"{what} {text}: expected a file name ending in {' or '.join(suffixes)}, got "
                                  f"{repr(target.suffix) if target.suffix else 'no extension'}")
        if target.exists() and not target.is_file():
            raise OutputPathError(f"{what} {text}: exists and is not a regular file (a device, pipe or socket); "
                                  "expected a file path to write")
        _check_can_create_in(target.parent, what, text, must_exist=parent_must_exist)
    return target


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
        return os.path.realpath(a) == os.path.realpath(b)
    except OSError:
        return False


def _check_can_create_in(folder: Path, what: str, text: str, must_exist: bool) -> None:
    """A new file can be created in ``folder`` (or, when it does not exist yet, in its nearest existing parent,
    where ``atomic_path`` will create the missing folders)."""
    folder = Path(os.path.abspath(folder))
    if must_exist and not folder.is_dir():
        raise OutputPathError(f"{what} {text}: folder {str(folder)!r} does not exist; expected an existing folder")
    existing = folder
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{what} {text}: {existing} is a file, not a folder; expected a path whose parents "
                              "are folders")
    try:
        fd, probe = tempfile.mkstemp(prefix=".syncav-write-check.", suffix=TEMPORARY_SUFFIX, dir=existing)
    except OSError as error:
        raise OutputPathError(f"{what} {text}: cannot create a file in folder {existing} ({error.strerror or error}); "
                              "expected a writable folder") from None
    os.close(fd)
    os.unlink(probe)


_FILE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_file_stem(name, what: str, suffix: str = ".safetensors") -> str:
    """A plain file name typed by a user (letters, digits, '.', '_', '-'; no folders; ``suffix`` optional) -> the
    name without ``suffix``. ``what`` names the input in the error."""
    if isinstance(name, str) and name.strip().endswith(suffix):
        name = name.strip()[:-len(suffix)]
    if not isinstance(name, str) or not _FILE_STEM.fullmatch(name.strip()) or name.strip() in (".", ".."):
        raise ValueError(f"{what}: expected a file name of letters, digits, '.', '_' and '-' (no folders), "
                         f"received {name!r}")
    return name.strip()


def copy_atomic(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy ``source`` to ``target`` through a temporary file beside it (never a half-written file)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def write_json_atomic(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as indented strict JSON (NaN refused) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    if path.parent and not path.parent.is_dir():
        raise ValueError(f"json path: folder {str(path.parent)!r} does not exist")
    write_text_atomic(path, text)
    return path
