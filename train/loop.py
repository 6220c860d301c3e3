"""The training loop shared by joint training and DPO: a plain function over a model, a batch source and a loss.

What it guarantees:
* **Determinism across interruption.** Step ``k``'s randomness (data, noise levels, noise) comes from a generator
  seeded with ``(seed, k)``, and the optimizer and EMA state are saved with the weights, so N steps in one run and
  N/2 + interrupt + resume N/2 give identical weights on a CPU.
* **Nothing lost.** A checkpoint is written every ``save_every`` steps and whenever the loop stops on an exception
  (interruption included), atomically (temp file + rename), in safetensors.
* **SIGTERM is an interruption.** ``docker stop``, a scheduler's pre-emption or ``kill`` save like Ctrl-C: in the
  main thread the loop turns SIGTERM into ``TrainingTerminated`` (a ``KeyboardInterrupt``) for as long as it runs.
  Kill -9 cannot be caught: the last checkpoint written (every ``save_every`` steps) is what a resume starts from.
* **Only trainable parameters** (``requires_grad``) are optimised, saved and averaged: freezing a tower or training
  LoRA adapters is a matter of what the caller leaves trainable.
* **The frozen base can be kept small** (``MemoryConfig``): its Linear / Conv weights stored in fp8 and upcast per
  layer, and block swap (only some fusion blocks on the device, the frozen weights of the others copied in per
  block, in the forward and in the backward's recomputation). The trainable parameters keep their dtype and device.
* **Several processes are one run** (``torchrun``, ``distributed``): each rank's loss is its share of the step's
  batch, their gradients are summed before the step, rank 0 alone writes checkpoints and shows progress. The
  logged loss is the batch's; the other logs (accuracies, margins) are means over the ranks of their own rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..runtime.block_swap import BlockSwap, enable_block_swap, installed_block_swap
from ..runtime.fp8 import FP8_OPS, layer_weight_keys, quantize_to_fp8
from ..runtime.fp8_matmul import upcast_only
from ..runtime.reproducible_blas import reproducible_blas_status, resume_is_bit_identical
from ..files.safetensors_io import CheckpointError, load_tensors, read_header, save_tensors_atomic
from .distributed import all_gather_objects, all_reduce_grads, all_reduce_sum, current_world
from .value_rules import ValueRuleError, one_of, positive, whole

log = logging.getLogger(__name__)

STATE_FORMAT = "comfyui-syncav train state v1"
CHECKPOINT_NAME = "train_state.safetensors"
PRECISIONS = ("fp32", "bf16")

# make_batch(step, generator) -> batch;  loss_fn(model, batch, generator) -> (loss, logs)
BatchFn = Callable[[int, torch.Generator], Any]
LossFn = Callable[[nn.Module, Any, torch.Generator], "tuple[torch.Tensor, dict[str, float]]"]
StepCallback = Callable[[int, dict], None]


@dataclass(frozen=True)
class MemoryConfig:
    """How the frozen base is held while training (``place_frozen_base``); trainable parameters are never touched.

    base_fp8: store the frozen Linear / Conv weights in float8_e4m3fn (half of bf16), upcast per layer to the dtype
        the forward computes in (runtime/fp8.py's layers). Lossy: the base is rounded to 3 mantissa bits.
    blocks_on_gpu: block swap (runtime/block_swap.py): keep this many fusion blocks on the device and copy the frozen
        weights of the others in per block; None: every block on the device. Turns gradient checkpointing on (without
        it the backward would hold every block's weights on the device anyway).
    """

    base_fp8: bool = False
    blocks_on_gpu: int | None = None

    def __post_init__(self):
        if not isinstance(self.base_fp8, bool):
            raise ValueRuleError("MemoryConfig.base_fp8", "True or False", self.base_fp8)
        if self.blocks_on_gpu is not None:
            whole("MemoryConfig.blocks_on_gpu", self.blocks_on_gpu, 0)


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.01
    warmup_steps: int = 200
    min_lr_fraction: float = 0.05        # cosine decays to this fraction of lr over the fixed step budget
    grad_clip: float = 1.0
    ema_decay: float | None = 0.998      # None: no EMA
    precision: str = "fp32"              # PRECISIONS: "fp32" or "bf16" (autocast)
    gradient_checkpointing: bool = False  # on whenever memory.blocks_on_gpu is set
    memory: MemoryConfig = MemoryConfig()
    save_every: int = 500
    log_every: int = 10
    seed: int = 0

    def __post_init__(self):
        for name, low in (("steps", 1), ("save_every", 1), ("log_every", 1), ("warmup_steps", 0), ("seed", 0)):
            whole(f"TrainConfig.{name}", getattr(self, name), low)
        positive("TrainConfig.lr", self.lr)
        one_of("TrainConfig.precision", self.precision, PRECISIONS)
        if isinstance(self.memory, dict):
            object.__setattr__(self, "memory", MemoryConfig(**self.memory))
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in (0, 1) or None, got {self.ema_decay}")


@dataclass
class TrainState:
    step: int = 0                                   # optimizer steps completed
    history: list[dict] = field(default_factory=list)   # averaged logs every log_every steps
    seconds: float = 0.0                            # wall-clock spent training, over all runs


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine over the fixed budget ``cfg.steps`` (not wall-clock: resumable, repeatable)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * cosine)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step: a function of (seed, step) only, so a resumed run draws what a straight run does."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2 ** 63))


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class EMA:
    """Exponential moving average of the trainable parameters (float32), with the usual early-step ramp."""

    def __init__(self, params: dict[str, nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, nn.Parameter], step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, p in params.items():
            self.shadow[name].lerp_(p.detach().float(), 1 - decay)

    def copy_to(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.shadow.items():
                params[name].copy_(value.to(params[name].dtype))


def average_logs(window: list[dict]) -> dict[str, float]:
    """Mean of each key over the steps that logged it (keys may vary: per-rule logs cover the rules drawn)."""
    totals: dict[str, list[float]] = {}
    for logs in window:
        for key, value in logs.items():
            totals.setdefault(key, []).append(value)
    return {key: sum(values) / len(values) for key, values in totals.items()}


# ---- the frozen base ------------------------------------------------------------------------------------------

# torch.nn's layers -> runtime/fp8.py's, which compute with a weight stored in fp8 (cast per call).
_FP8_LAYERS = {nn.Linear: FP8_OPS.Linear, nn.Conv1d: FP8_OPS.Conv1d, nn.Conv3d: FP8_OPS.Conv3d}


def _fp8_layer(module: nn.Module) -> nn.Module:
    """runtime/fp8.py's layer of ``module``'s shape holding ``module``'s very parameters, built through its own
    constructor (so whatever state that class sets up is there) without allocating a weight."""
    if isinstance(module, nn.Linear):
        layer = FP8_OPS.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
    else:
        layer = _FP8_LAYERS[type(module)](
            module.in_channels, module.out_channels, module.kernel_size, stride=module.stride, padding=module.padding,
            dilation=module.dilation, groups=module.groups, bias=module.bias is not None,
            padding_mode=module.padding_mode, device="meta")
    layer.weight, layer.bias = module.weight, module.bias
    layer.train(module.training)
    return layer


def store_frozen_layers_in_fp8(model: nn.Module, work_device: str | torch.device | None = None) -> int:
    """Store the frozen Linear / Conv weights of ``model`` in float8_e4m3fn (``quantize_to_fp8``), in place; returns
    how many.

    Trainable layers (LoRA factors), biases, norms and modulation tables keep their dtype, and the forward keeps
    computing in the dtype it did (``compute_dtype`` is pinned to it). torch.nn layers are replaced by runtime/fp8.py's
    (``FP8_OPS``); layers that already compute with fp8 weights (runtime/fp8.py's, ComfyUI's ``manual_cast`` ones,
    which cast per call) keep their class. work_device: where the rounding is computed (a GPU rounds the weights of a
    model held on the CPU far faster); the weights stay where they are.
    """
    joint = getattr(model, "diffusion_model", model)
    if getattr(joint, "compute_dtype", False) is None:
        joint.compute_dtype = joint.working_dtype()
    converted = 0
    with torch.no_grad():
        for key in sorted(layer_weight_keys(joint)):
            path = key[:-len(".weight")]
            module = joint.get_submodule(path)
            weight = module.weight
            if weight.requires_grad or (weight.is_floating_point() and weight.element_size() == 1):
                continue          # trainable, or fp8 already (an fp8 file loaded as stored)
            if type(module) in _FP8_LAYERS:
                parent, _, name = path.rpartition(".")
                module = _fp8_layer(module)
                setattr(joint.get_submodule(parent), name, module)
            elif type(module) not in _FP8_LAYERS.values() and not getattr(module, "comfy_cast_weights", False):
                raise ValueError(f"base_fp8: {key} is a {type(module).__name__}, a layer that does not cast its "
                                 "weight per call, so it cannot compute with an fp8 weight (expected torch.nn's, "
                                 "runtime/fp8.py's or ComfyUI's manual_cast layers)")
            source = weight.data if work_device is None else weight.data.to(work_device)
            weight.data = quantize_to_fp8(source).to(weight.device)
            converted += 1
        left = [name for name, t in [*joint.named_parameters(), *joint.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"base_fp8: runtime/fp8.py's layers hold state this conversion does not fill: "
                               f"{left[:3]}")
    return converted


def place_frozen_base(model: nn.Module, memory: MemoryConfig, device: str | torch.device) -> BlockSwap | None:
    """Apply ``memory`` to ``model`` for training on ``device``, after its trainable parameters are chosen (the
    adapters added): fp8 storage of the frozen layers, then block swap with the trainable parameters resident.

    A model that arrives with block swap (loaded for sampling with it) is swapped again for training, with
    ``memory.blocks_on_gpu`` or else its own count: the adapters added since sit with the offloaded blocks.
    Returns the block swap installed (None: every block on the device).
    """
    device = torch.device(device)
    blocks_on_gpu = memory.blocks_on_gpu
    swap = installed_block_swap(model)
    if swap is not None:
        device, blocks_on_gpu = swap.device, swap.blocks_on_gpu if blocks_on_gpu is None else blocks_on_gpu
        swap.remove()
        swap = None
    if memory.base_fp8:
        count = store_frozen_layers_in_fp8(model, device)
        log.info("train: %d frozen layer weights stored in fp8", count)
    if blocks_on_gpu is not None:
        if not hasattr(model, "_fusion_block"):
            raise ValueError(f"blocks_on_gpu: block swap needs a JointModel (fusion blocks), got "
                             f"{type(model).__name__}")
        swap = enable_block_swap(model, blocks_on_gpu, device, keep_trainable=True)
    return swap


# ---- checkpoint -----------------------------------------------------------------------------------------------

def save_train_state(path: str | os.PathLike, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer,
                     ema: EMA | None, state: TrainState, config: TrainConfig, extra: dict[str, str] | None = None
                     ) -> None:
    tensors: dict[str, torch.Tensor] = {f"param.{n}": p.detach() for n, p in params.items()}
    if ema is not None:
        tensors.update({f"ema.{n}": t for n, t in ema.shadow.items()})
    by_param = {id(p): n for n, p in params.items()}
    for p, slot in optimizer.state.items():
        for key, value in slot.items():
            tensors[f"optim.{by_param[id(p)]}.{key}"] = torch.as_tensor(value)
    metadata = {"format": STATE_FORMAT, "step": str(state.step), "seconds": f"{state.seconds:.3f}",
                "config": json.dumps(asdict(config)), "history": json.dumps(state.history), **(extra or {})}
    save_tensors_atomic(tensors, path, metadata)


def load_train_state(path: str | os.PathLike, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer,
                     ema: EMA | None) -> TrainState:
    _, metadata = read_header(path)
    if metadata.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a training checkpoint of this package (format "
                              f"{metadata.get('format')!r}, expected {STATE_FORMAT!r})")
    tensors = load_tensors(path)
    names = {k[len("param."):] for k in tensors if k.startswith("param.")}
    if names != set(params):
        missing, unexpected = sorted(set(params) - names), sorted(names - set(params))
        raise CheckpointError(f"{path}: its trainable parameters differ from the model's: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]} (another model, or other layers frozen?)")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param.{name}"].to(p.dtype))
    for name, p in params.items():
        slot = {k.rsplit(".", 1)[1]: v.to(p.device) for k, v in tensors.items()
                if k.startswith(f"optim.{name}.") and k.count(".") == name.count(".") + 2}
        if slot:
            optimizer.state[p] = slot
    if ema is not None:
        for name in params:
            key = f"ema.{name}"
            ema.shadow[name] = tensors[key].float().clone() if key in tensors else params[name].detach().float().clone()
    return TrainState(step=int(metadata["step"]), history=json.loads(metadata.get("history", "[]")),
                      seconds=float(metadata.get("seconds", 0.0)))


class TrainingTerminated(KeyboardInterrupt):
    """SIGTERM arrived while training: handled like Ctrl-C (the loop saves the last completed step, then stops)."""


@contextlib.contextmanager
def sigterm_interrupts():
    """While inside, SIGTERM raises ``TrainingTerminated`` in the main thread (elsewhere, e.g. in ComfyUI's worker
    thread, signals cannot be handled and the server's own handling applies). The previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise TrainingTerminated(f"stopped by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- the loop -------------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    state: TrainState
    ema: EMA | None
    checkpoint: Path


def train(model: nn.Module, make_batch: BatchFn, loss_fn: LossFn, cfg: TrainConfig, out_dir: str | os.PathLike,
          *, resume: bool = True, callback: StepCallback | None = None, progress: bool = True,
          device: str | torch.device | None = None) -> TrainResult:
    """Train ``model``'s trainable parameters for ``cfg.steps`` optimizer steps (in total, counting resumed ones).

    make_batch(step, generator) builds step ``step``'s batch; loss_fn(model, batch, generator) returns (loss, logs).
    resume: continue from ``out_dir/train_state.safetensors`` when it exists. callback(step, logs) runs after each
    completed step; an exception raised there (an interruption) stops training after a checkpoint is written.
    """
    out_dir = Path(out_dir)
    checkpoint = out_dir / CHECKPOINT_NAME
    device = torch.device(device) if device is not None else next(model.parameters()).device
    params = trainable_parameters(model)
    if not params:
        raise ValueError("train: the model has no trainable parameters (everything is frozen)")
    swap = place_frozen_base(model, cfg.memory, device)
    if hasattr(model, "set_gradient_checkpointing"):
        model.set_gradient_checkpointing(cfg.gradient_checkpointing or swap is not None)
    optimizer = torch.optim.AdamW(list(params.values()), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    ema = EMA(params, cfg.ema_decay) if cfg.ema_decay is not None else None
    state = TrainState()
    if resume and checkpoint.is_file():
        state = load_train_state(checkpoint, params, optimizer, ema)
        if device.type == "cpu" and not resume_is_bit_identical():
            log.warning("train: resuming at step %d without MKL's reproducible mode (%s): the run will match a "
                        "straight one closely, not bit for bit", state.step, reproducible_blas_status())

    world = current_world()

    def save() -> None:
        if world.is_main:       # every rank holds the same state: one writes it
            save_train_state(checkpoint, params, optimizer, ema, state, cfg)

    bar = None
    if progress and world.is_main and state.step < cfg.steps:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=state.step, desc="training", dynamic_ncols=True)
    window: list[dict] = []
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    try:
        # upcast_only: fp8 base weights multiply the same way with and without grad (runtime/fp8_matmul.py)
        with sigterm_interrupts(), torch.inference_mode(False), torch.enable_grad(), upcast_only():
            while state.step < cfg.steps:
                started = time.perf_counter()
                step = state.step
                generator = step_generator(cfg.seed, step)
                batch = make_batch(step, generator)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, cfg)
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss, logs = loss_fn(model, batch, generator)
                loss.backward()
                if world.size > 1:          # this rank's share of the batch: the sums are the whole batch's
                    all_reduce_grads(params)
                    loss = all_reduce_sum(loss)
                    logs = {**average_logs(all_gather_objects(logs)), "loss": float(loss)}
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"train: loss became {float(loss)} at step {step}; the last good state "
                                             f"is in {checkpoint}")
                grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)
                optimizer.step()
                if ema is not None:
                    ema.update(params, step)
                state.step += 1
                state.seconds += time.perf_counter() - started
                logs = {**logs, "grad_norm": float(grad_norm), "lr": optimizer.param_groups[0]["lr"]}
                window.append(logs)
                if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                    state.history.append({"step": state.step, "seconds": round(state.seconds, 2),
                                          **average_logs(window)})
                    window.clear()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{logs['loss']:.4f}")
                if state.step % cfg.save_every == 0:
                    save()
                if callback is not None:
                    callback(state.step, logs)
    except BaseException:
        save()  # the last completed step: resume picks up exactly here
        raise
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    save()
    return TrainResult(state=state, ema=ema, checkpoint=checkpoint)
