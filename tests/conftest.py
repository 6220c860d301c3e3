import os
import sys
from pathlib import Path

import pytest
import torch

# Reference fixtures made with the public reference implementations live beside the repository; set
# SYNCAV_REFERENCE_DIR to use another copy.
REFERENCE_DIR = Path(os.environ.get("SYNCAV_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference"))


# The nodes are V3 ComfyUI nodes: their unit tests need ComfyUI's node API (comfy_api), taken from a ComfyUI source
# folder. Its runtime (devices, model management) stays out: the nodes use their stand-ins in this process.
if os.environ.get("COMFYUI_DIR") and os.path.isdir(os.environ["COMFYUI_DIR"]):
    sys.path.append(os.environ["COMFYUI_DIR"])
    os.environ["SYNCAV_NO_COMFYUI"] = "1"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE_DIR / "ovi_tiny_case.json").is_file():
        if os.environ.get("SYNCAV_REQUIRE_REFERENCE"):  # CI: a missing fixture is a failure, not a skip
            pytest.fail(f"reference fixtures not found in {REFERENCE_DIR}")
        pytest.skip(f"reference fixtures not found in {REFERENCE_DIR} (set SYNCAV_REFERENCE_DIR)")
    return REFERENCE_DIR


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Micro models gain nothing from threads, and on a busy machine OpenMP barriers turn milliseconds into seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text_encoder():
    from comfyui_syncav.text.embedded import TinyTextEncoder
    return TinyTextEncoder()
