"""The files a prompt wrote, brought to this machine: ``--out`` checked before anything is queued
(``check_out_dir``), the file references of the nodes' outputs (``file_refs``), where each goes under ``--out``
(``local_path``: a server name that would leave it is refused with ``UnsafeFileName``), and the downloads themselves
(``download_outputs``), each written path printed on stdout."""

from __future__ import annotations

import os
from pathlib import Path, PureWindowsPath
from typing import Any, Awaitable, Callable, Iterable, TextIO

from ..files.atomic import check_output_path
from .client import ComfyClient, LocalWriteError, ServerError, ServerUnavailable
from .exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_SERVER_GONE
from .report import node_label


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a folder this process can create and write in, checked before anything is queued: no server
    time is spent on outputs that could not be kept. The folder itself is made by the first download."""
    if not isinstance(out_dir, (str, os.PathLike)):
        raise LocalWriteError(f"--out: expected a folder path, got {out_dir!r}")
    return check_output_path(out_dir, "--out", folder=True)


def file_refs(outputs: dict[str, dict]) -> Iterable[tuple[str, dict]]:
    """``(node_id, {"filename", "subfolder", "type"})`` for every file in the nodes' UI outputs, in node order."""
    seen = set()
    for node_id, ui in outputs.items():
        if not isinstance(ui, dict):
            continue
        for items in ui.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    key = repr((item.get("type") or "output", item.get("subfolder") or "", item["filename"]))
                    if key not in seen:
                        seen.add(key)
                        yield node_id, item


class UnsafeFileName(ValueError):
    """A file name from the server that cannot be written under --out as it is."""


# Longest file name written: the temporary name beside it (atomic writes) adds about 20 characters, and most file
# systems stop at 255 bytes.
MAX_NAME_BYTES = 200


def local_path(out_dir: Path, ref: dict) -> Path:
    """Where a server file goes under ``out_dir`` (its subfolder kept). Raises UnsafeFileName for a name that is not
    a plain relative path inside ``out_dir`` (absolute, ``..``, empty, NUL or control characters, too long)."""
    filename, subfolder, kind = ref.get("filename"), ref.get("subfolder") or "", ref.get("type") or "output"
    where = f"the server's file name {filename!r} (subfolder {subfolder!r})"
    if not isinstance(filename, str) or not isinstance(subfolder, str) or not isinstance(kind, str):
        raise UnsafeFileName(f"{where}: expected text for 'filename', 'subfolder' and 'type', got "
                             f"{type(filename).__name__}, {type(subfolder).__name__} and {type(kind).__name__}")
    folders = [p for p in subfolder.replace("\\", "/").split("/") if p not in ("", ".")]

    def why_not(part: str) -> str | None:
        if part in ("", ".", ".."):
            return f"{part!r} is not a file name" if part != ".." else "'..' would leave the output folder"
        if any(ord(c) < 32 or ord(c) == 127 for c in part):
            return "it holds a NUL or control character"
        if "/" in part or "\\" in part or (os.name == "nt" and ":" in part):
            return "a file name cannot hold a path separator or a drive"
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            return f"a name is longer than {MAX_NAME_BYTES} bytes"
        return None

    if subfolder.replace("\\", "/").startswith("/") or PureWindowsPath(subfolder).drive:
        raise UnsafeFileName(f"{where}: an absolute subfolder would leave the output folder")
    for part in folders + [filename]:
        reason = why_not(part)
        if reason:
            raise UnsafeFileName(f"{where}: {reason}")
    path = out_dir.joinpath(*folders, filename)
    root = os.path.normpath(os.path.abspath(out_dir))
    if os.path.commonpath([root, os.path.normpath(os.path.abspath(path))]) != root:  # a last, lexical check
        raise UnsafeFileName(f"{where}: it would leave the output folder")
    return path


async def download_outputs(client: ComfyClient, outputs: dict[str, dict], prompt: dict, out_dir: Path, *,
                           expect_files: bool, bounded: Callable[[Awaitable[Any]], Awaitable[Any]],
                           note: Callable[[str], None], out: TextIO) -> int:
    """Fetch every output file into ``out_dir`` (also after a failure: what the nodes that ran wrote is still
    useful); each written path is printed on ``out``, everything else goes to ``note``. ``bounded(call)`` awaits one
    request within what is left of the run's --timeout. The exit code is the first failure's: a local write error
    is bad --out, a broken connection the server's."""
    refs = list(file_refs(outputs))
    if not refs:
        if expect_files:
            note("the workflow produced no files")
        return EXIT_OK
    codes = []
    written: set[Path] = set()
    for node_id, ref in refs:
        try:
            local = local_path(out_dir, ref)
        except UnsafeFileName as unsafe:
            note(f"error: output of node {node_label(prompt, node_id)}: {unsafe}; not written")
            codes.append(EXIT_FAILED)
            continue
        if local in written:
            continue
        try:
            size = await bounded(client.download(ref, str(local)))
        except LocalWriteError as error:
            note(f"error: --out {out_dir}: {error}")
            codes.append(EXIT_BAD_INPUT)
            continue
        except (ServerUnavailable, ServerError) as error:
            note(f"error: could not download {ref.get('filename')!r} of node {node_label(prompt, node_id)}: {error}")
            codes.append(EXIT_SERVER_GONE if isinstance(error, ServerUnavailable) else EXIT_FAILED)
            continue
        written.add(local)
        print(f"wrote {local} ({size} bytes, node {node_label(prompt, node_id)})", file=out, flush=True)
    return codes[0] if codes else EXIT_OK
