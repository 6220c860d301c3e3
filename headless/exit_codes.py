"""The exit codes of ``python -m comfyui_syncav run`` (``run_workflow`` returns them): one place, so the runner and
the output downloads that decide them agree."""

EXIT_OK = 0
EXIT_FAILED = 1  # the server rejected the prompt, a node raised, or an output could not be fetched (HTTP error,
#                  a file name that would not stay inside --out)
EXIT_BAD_INPUT = 2  # unreadable workflow, bad --set / --timeout / --server, an --out that cannot be written (checked
#                     before queueing; a disk that fills up while downloading too): the code other commands use
EXIT_SERVER_GONE = 3  # the server could not be reached, was lost for good, forgot the prompt, or answered in a way
#                       ComfyUI does not (a queued prompt is then interrupted)
EXIT_INTERRUPTED = 4  # the prompt was interrupted (Cancel in the browser, POST /interrupt, Ctrl-C here)
EXIT_TIMEOUT = 5  # --timeout (counted from the first request) passed first; a running prompt was interrupted
