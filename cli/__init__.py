"""The command line (``python -m comfyui_syncav``): one module per command, the parser and exit codes in main."""

from .entry import build_parser, main

__all__ = ["build_parser", "main"]
