"""What every bad-input case checks, in one place.

A case is one bad or edge input fed through a public entry point (a loader, a CLI command, a dataset folder, the
headless runner against a fake server). It passes when the entry point answers with ONE clear error that names the
input and says what was expected (the ``expected`` regex), without a raw traceback, a hang or a write outside the
chosen output folder.

Set ``SYNCAV_BAD_INPUT_TABLE=FILE`` to append one JSON line per case (id, component, message) to FILE: the table
of inputs and the messages they got.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest


@dataclass(frozen=True)
class BadInput:
    id: str           # short name, also the pytest id
    component: str    # the entry point it goes through: "cli generate", "load_lora", "AV dataset", "runner" ...
    expected: str     # regex the error message must match (searched, case-insensitive)


def params(cases: list[BadInput]) -> list:
    """pytest.param per case, with its id, for ``@pytest.mark.parametrize("case", params(CASES))``."""
    ids = [case.id for case in cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"duplicate bad-input ids: {sorted(duplicates)}"
    return [pytest.param(case, id=case.id) for case in cases]


def record(case: BadInput, message: str) -> None:
    table = os.environ.get("SYNCAV_BAD_INPUT_TABLE")
    if table:
        with open(table, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"id": case.id, "component": case.component, "message": message}) + "\n")


def check_message(case: BadInput, message: str) -> str:
    """The message matches the case's regex, is one line of text and not a traceback; records it."""
    assert "Traceback (most recent call last)" not in message, message
    assert re.search(case.expected, message, re.IGNORECASE | re.DOTALL), \
        f"{case.id}: expected /{case.expected}/ in the message, got: {message!r}"
    record(case, message.strip())
    return message


def expect_error(case: BadInput, call: Callable[[], object], error_types=(ValueError,)) -> str:
    """``call()`` raises one of ``error_types`` whose message matches the case; returns the message."""
    with pytest.raises(error_types) as info:
        call()
    return check_message(case, str(info.value))


def expect_cli_error(case: BadInput, argv: list[str], capsys, exit_codes=(2,)) -> str:
    """``python -m comfyui_syncav ARGV`` (in process) exits with one of ``exit_codes`` and one ``error: ...`` line
    on stderr (argparse's own usage errors included); returns that line."""
    from comfyui_syncav.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse rejects an argument before the command runs
        code = exit_.code
    err = capsys.readouterr().err
    assert code in exit_codes, f"{case.id}: exit code {code}, expected one of {exit_codes}; stderr: {err}"
    lines = [line for line in err.splitlines() if "error:" in line]
    assert lines, f"{case.id}: no 'error:' line on stderr: {err!r}"
    return check_message(case, lines[-1])


def files_under(folder: str | os.PathLike) -> set[Path]:
    """Every file below ``folder`` (to assert nothing was written outside an output folder)."""
    return {p for p in Path(folder).rglob("*") if p.is_file()}
