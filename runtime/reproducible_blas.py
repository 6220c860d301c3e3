"""Bit-reproducible CPU matrix products: Intel MKL's conditional numerical reproducibility (CNR), switched on once.

Why: on CPUs where MKL takes its AVX-512 code paths, ``sgemm`` may sum in an order that depends on how its operands
happen to be aligned in memory, so the same product computed twice in one process, or in a resumed process, can
differ in the last bits. A training run interrupted and resumed then drifts away from the straight run (seen:
a loss of 1.030067 instead of 1.030089 one step after a resume). MKL's strict CNR mode fixes the summation order
whatever the alignment, on the code path it picks for the CPU, for a fixed number of threads.

MKL reads its mode once, before its first computation, so the package switches it on when it is imported (as a
ComfyUI custom node, from the command line, in tests), before any matrix product has run. A user's own ``MKL_CBWR``
wins; ``SYNCAV_REPRODUCIBLE_BLAS=0`` leaves MKL alone. Builds without MKL (macOS, aarch64, CUDA-only paths) need
nothing: their CPU kernels do not depend on alignment this way. ``bench/reproducible_blas.py`` measures the cost.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MKL_CBWR_AUTO = 2                      # the CPU's own code path, chosen once (mkl_service.h)
MKL_CBWR_STRICT = 0x10000              # ... and results independent of memory alignment
MKL_CBWR_ERR_MODE_CHANGE_FAILURE = -8  # MKL has already computed something: the mode is fixed for this process
OPT_OUT_VARIABLE = "SYNCAV_REPRODUCIBLE_BLAS"

_status: str | None = None


def _mkl_service_library():
    """The loaded library that exports MKL's service functions (torch links MKL statically into torch_cpu)."""
    import torch

    lib_dir = Path(torch.__file__).resolve().parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        if (lib_dir / name).is_file():
            try:
                library = ctypes.CDLL(str(lib_dir / name))
                if hasattr(library, "mkl_serv_cbwr_set"):
                    return library
            except OSError:
                return None
    return None


def enable_reproducible_blas() -> str:
    """Switch MKL's strict reproducible mode on if it can still be switched; returns what holds now (the same
    string on every later call)."""
    global _status
    if _status is not None:
        return _status
    if os.environ.get(OPT_OUT_VARIABLE, "1").strip() == "0":
        _status = f"off ({OPT_OUT_VARIABLE}=0)"
    elif os.environ.get("MKL_CBWR"):
        _status = f"as set by MKL_CBWR={os.environ['MKL_CBWR']}"
    else:
        import torch

        if not torch.backends.mkl.is_available():
            _status = "not needed (this torch has no MKL)"
        else:
            library = _mkl_service_library()
            if library is None:
                # MKL linked some other way: its environment variable still works if MKL has not started yet.
                os.environ["MKL_CBWR"] = "AUTO,STRICT"
                _status = "requested through MKL_CBWR=AUTO,STRICT"
            else:
                code = library.mkl_serv_cbwr_set(ctypes.c_int(MKL_CBWR_AUTO | MKL_CBWR_STRICT))
                if code == 0:
                    _status = "on"
                elif code == MKL_CBWR_ERR_MODE_CHANGE_FAILURE:
                    _status = ("unavailable: MKL computed before comfyui_syncav was imported (set "
                               "MKL_CBWR=AUTO,STRICT in the environment to get it)")
                else:
                    _status = f"unavailable: MKL refused the mode (code {code})"
    if _status.startswith("unavailable"):
        log.warning("SyncAV: MKL's reproducible mode is %s; a resumed CPU training run may differ from a straight "
                    "one in the last bits", _status)
    return _status


def reproducible_blas_status() -> str:
    """What holds in this process (``enable_reproducible_blas`` ran when the package was imported)."""
    return enable_reproducible_blas()


def resume_is_bit_identical() -> bool:
    """Whether a resumed CPU training run in this process repeats the straight run bit for bit (see the module)."""
    status = reproducible_blas_status()
    return status == "on" or status.startswith(("as set", "not needed", "requested"))
