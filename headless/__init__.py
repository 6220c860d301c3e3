"""Run workflows on a ComfyUI server without the browser: ``python -m comfyui_syncav run WORKFLOW.json``.

``ui_to_api`` converts a workflow saved by the editor into the API format; ``client`` talks to the server's HTTP and
websocket API; ``runner`` queues a workflow and follows it (``outcome``: what the server says of it; ``report``: what
the terminal shows; ``outputs``: ``--out`` and the downloads; ``exit_codes``). Nothing here imports ComfyUI.
"""

from .overrides import Override, OverrideError, apply_overrides
from .runner import run_workflow
from .ui_to_api import UiWorkflowError, is_ui_format, ui_to_api

__all__ = ["Override", "OverrideError", "UiWorkflowError", "apply_overrides", "is_ui_format", "run_workflow",
           "ui_to_api"]
