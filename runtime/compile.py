"""Regional compilation: the joint model's fusion-block step compiled once and reused by every block.

Why regional. ``torch.compile`` on the whole forward (what ComfyUI's TorchCompileModel node does) traces every fusion
block into one graph and compiles each of them: about 258 s for Ovi's 30 blocks on an H200 before the first step.
The blocks all run the same computation on their own weights, so this compiles only that computation, the model's
``fusion_step`` (block ``i`` of both towers: self-attention, text and cross-modal attention, feed-forwards; nearly
all of a forward's work), and runs every block through it. torch.compile inlines the block modules and takes
their parameters as graph inputs, so one compiled graph serves all blocks of a model. The embeddings, the heads
and the loop over the blocks stay eager.

What compiles again (each time about as long as the first): a step whose guards fail, i.e. a kind of call not seen
yet: ``cross_modal`` switched, a ``gate`` (cross-modal cut rows) present or not, audio-alone rows present or not,
token counts of another clip size, grad mode on or off (training), other dtypes or devices. The row count (batch)
is marked dynamic from the first call (``dynamic=None``), so guidance steps with different numbers of passes share
a graph. Each compiled model keeps its own variants and torch's recompile limit
(``torch._dynamo.config.recompile_limit``, 8 by default) counts them per model; past it the step runs eagerly.

Block swap (runtime/block_swap.py) wraps ``_fusion_block`` and gradient checkpointing calls it; both reach the
compiled step through ``model.fusion_step`` and work unchanged.

    handle = compile_fusion_blocks(model)              # inductor; "aot_eager" or "eager" need no compiler
    velocity_video, velocity_audio = model(...)       # the first call of each kind compiles
    handle.compile_seconds, handle.compiled_variants  # time spent compiling so far, variants compiled
    handle.remove()                                    # the eager step back
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import sys
import time
import types

import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list, reset_code

log = logging.getLogger(__name__)

# The choices of the front ends' compile option (SyncAV Loader, generate --compile): see ``apply_compile_choice``.
COMPILE_CHOICES = ("off", "regional")

# Modes that record CUDA graphs: a CUDA graph holds its parameters' addresses, and here every block passes its own
# parameters to the one graph (block swap even moves them), so the graphs would be re-recorded block after block.
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


class CompiledFusionStep:
    """Installed as ``model.fusion_step``: runs the compiled step and records what compiling cost.

    Build with ``compile_fusion_blocks``. Attributes: ``model``, ``original`` (the step it replaced), ``backend``,
    ``mode``, ``dynamic``, ``fullgraph``; ``compile_seconds`` (wall time of the calls that compiled a new variant,
    the one block run each of them made included); ``compiled_variants`` (variants of the step compiled so far).
    """

    def __init__(self, model, original, backend, mode, dynamic, fullgraph, options):
        self.model, self.original = model, original
        self.backend, self.mode, self.dynamic, self.fullgraph = backend, mode, dynamic, fullgraph
        # torch keeps compiled variants, and counts recompiles, on the code object: a private copy of the step's code
        # keeps this model's variants apart from any other compiled model's (a deep copy of the model shares them),
        # and remove() can drop them.
        self._code = original.__code__.replace()
        step = types.FunctionType(self._code, original.__globals__, original.__name__, original.__defaults__,
                                  original.__closure__)
        step.__kwdefaults__ = original.__kwdefaults__
        self._compiled = torch.compile(step, backend=backend, mode=mode, dynamic=dynamic, fullgraph=fullgraph,
                                       options=options)
        self.compile_seconds = 0.0

    @property
    def compiled_variants(self) -> int:
        """How many variants (sets of guards) of the step torch has compiled for this model."""
        return len(_debug_get_cache_entry_list(self._code))

    def __call__(self, *args):
        if self._compiled is None:
            raise RuntimeError("regional compilation was removed from this model; its step is the eager one again")
        args = tuple(self._prepare(x) for x in args)
        before, started = self.compiled_variants, time.perf_counter()
        try:
            out = self._compiled(*args)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            raise RuntimeError(f"regional compilation: the {self._backend_name()} backend could not compile the "
                               f"fusion step: {error.inner_exception!r}. {_remedy(self.backend)}") from error
        if self.compiled_variants > before:
            seconds = time.perf_counter() - started
            self.compile_seconds += seconds
            log.info("regional compilation: compiled variant %d of the fusion step in %.1f s (%s backend)",
                     self.compiled_variants, seconds, self._backend_name())
        return out

    def _prepare(self, x):
        """Every tensor argument of the step has its rows first (v [Bv, Nv, dim], a [B, Na, dim], projections, texts,
        lengths, gate). A view of another tensor (the first block's tokens are views of the patch embedding) gets its
        own storage: torch guards a view's base, so the first block would otherwise compile a variant of its own."""
        if not isinstance(x, torch.Tensor):
            return x
        if x._base is not None:
            x = x.clone(memory_format=torch.contiguous_format)
        if self.dynamic is None and x.dim() > 0:
            # A hint, not a demand: a dimension of size 1 stays specialised instead of failing the compile.
            torch._dynamo.maybe_mark_dynamic(x, 0)
        return x

    def _backend_name(self) -> str:
        return repr(self.backend) if isinstance(self.backend, str) else getattr(self.backend, "__name__", "custom")

    def remove(self):
        """Put the eager step back and drop the compiled variants. Returns the model."""
        if vars(self.model).get("fusion_step") is not self:
            raise ValueError("regional compilation: this handle is not installed on its model (removed already?)")
        self.model.fusion_step = self.original
        self._compiled = None
        reset_code(self._code)
        return self.model


def compiled_fusion_step(model) -> CompiledFusionStep | None:
    """The handle of ``model``'s regional compilation, or None when its step is not compiled."""
    step = getattr(model, "fusion_step", None)
    return step if isinstance(step, CompiledFusionStep) else None


def compile_fusion_blocks(model, backend="inductor", mode: str | None = None, dynamic: bool | None = None,
                          fullgraph: bool = False, options: dict | None = None) -> CompiledFusionStep:
    """Compile ``model.fusion_step`` (a JointModel's) once for all its fusion blocks; returns the handle.

    backend: a torch.compile backend name ("inductor": generated kernels, needs a C++ compiler on the CPU and Triton
        on CUDA; "aot_eager" / "eager": no code generation, for checks) or a backend callable.
    mode / options: inductor's (None: its default, the shortest compile; "max-autotune-no-cudagraphs" tunes the
        matrix products, far longer to compile). Modes that record CUDA graphs are refused (see CUDAGRAPH_MODES).
    dynamic: None: row counts dynamic from the first call, other sizes once they change (torch's automatic dynamic
        shapes); True / False: every size dynamic / static, as torch.compile takes them.
    fullgraph: True makes a graph break an error instead of splitting the step.
    Nothing compiles here: the first forward of each kind of call does (see the module docstring).
    """
    if not isinstance(model, torch.nn.Module) or not callable(getattr(model, "fusion_step", None)) \
            or not hasattr(model, "_fusion_block"):
        raise ValueError(f"model: expected a JointModel (a module with a fusion_step), got {type(model).__name__}")
    if compiled_fusion_step(model) is not None:
        raise ValueError("model: its fusion blocks are compiled already (remove() the handle before compiling again)")
    original = model.fusion_step
    if not inspect.isfunction(original) or hasattr(original, "_torchdynamo_orig_callable"):
        raise ValueError(f"model: its fusion_step must be a plain Python function to compile, got "
                         f"{type(original).__name__} (compiled or replaced elsewhere?)")
    if isinstance(backend, str):
        if backend not in torch._dynamo.list_backends(exclude_tags=()):
            raise ValueError(f"backend: expected a torch.compile backend such as 'inductor', 'aot_eager' or 'eager', "
                             f"got {backend!r}")
    elif not callable(backend):
        raise ValueError(f"backend: expected a backend name or callable, got {type(backend).__name__}")
    if (mode is not None or options is not None) and backend != "inductor":
        raise ValueError(f"mode / options: only the inductor backend takes them, the backend is {backend!r}")
    if mode in CUDAGRAPH_MODES:
        raise ValueError(f"mode: {mode!r} records CUDA graphs, which hold each block's weights; every block shares "
                         f"this graph, so use None or 'max-autotune-no-cudagraphs'")
    if dynamic not in (None, True, False):
        raise ValueError(f"dynamic: expected None, True or False, got {dynamic!r}")
    if backend == "inductor":
        for problem in inductor_problems(model):
            log.warning("regional compilation: %s; the first forward will fail. %s", problem, _remedy(backend))
    handle = CompiledFusionStep(model, original, backend, mode, dynamic, fullgraph, options)
    model.fusion_step = handle
    log.info("regional compilation: the fusion step of %d blocks compiles at the first forward (%s backend)",
             model.config.num_blocks if hasattr(model, "config") else -1, handle._backend_name())
    return handle


def apply_compile_choice(model, choice: str, what: str = "compile") -> CompiledFusionStep | None:
    """A front end's compile option: "off" leaves ``model`` eager (returns None), "regional" compiles its fusion
    blocks with inductor's defaults (returns the handle). ``what`` names the option in errors."""
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"{what}: expected one of {', '.join(COMPILE_CHOICES)}, got {choice!r}")
    return compile_fusion_blocks(model) if choice == "regional" else None


def inductor_problems(model) -> list[str]:
    """What inductor lacks on this machine for the device ``model`` will run on: where CUDA is available a model on
    the CPU counts as a CUDA one (ComfyUI and block swap keep weights on the CPU and compute on the GPU)."""
    devices = {p.device.type for p in model.parameters()}
    if torch.cuda.is_available() and "cpu" in devices:
        devices = (devices - {"cpu"}) | {"cuda"}
    problems = []
    if "cpu" in devices:
        compiler = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
        if shutil.which(compiler) is None:
            problems.append(f"inductor on the CPU needs a C++ compiler and {compiler!r} ($CXX) was not found")
    if "cuda" in devices:
        from torch.utils._triton import has_triton

        if not has_triton():
            problems.append("inductor on CUDA needs Triton, which is not installed")
    return problems


def _remedy(backend) -> str:
    return ("Install what it needs, pass backend='aot_eager' (no code generation), or run without compilation."
            if backend == "inductor" else "Pass another backend, or run without compilation.")
