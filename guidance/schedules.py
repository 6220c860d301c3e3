"""Flow-matching noise schedules and solvers, on diffusers' schedulers.

Convention (DESIGN.md): ``x_sigma = (1 - sigma) * x0 + sigma * noise`` with ``sigma`` in [0, 1], and the joint model
predicts the velocity ``noise - x0`` = ``d x_sigma / d sigma``. Both diffusers schedulers used here speak exactly
this convention, which this module pins down so the sampler never has to think about it:

* ``FlowMatchEulerDiscreteScheduler.step`` does ``x + (sigma_next - sigma) * model_output``: it takes the velocity.
* ``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)`` turns the output into
  ``x0 = x - sigma * model_output`` with ``alpha = 1 - sigma``: it takes the velocity too.

Timesteps vs sigmas: diffusers keeps both. ``timesteps`` are ``sigma * num_train_timesteps`` (UniPC even rounds
them to int64) and are only a key the schedulers use to find their place; the model must be given the *sigmas*
(``FlowSolver.sigmas[i]``), never ``timesteps / 1000``. Lookup by timestep is also fragile (two sigmas near 1 can
round to the same integer timestep), so the solvers here pin ``begin_index = 0`` and advance one step per call.

Both solvers use the same grid, the one Wan2.x and Ovi sample with: ``linspace(1, 1/1000, steps + 1)[:-1]``
shifted by ``sigma' = shift * sigma / (1 + (shift - 1) * sigma)`` and followed by a terminal 0, so Euler and
UniPC runs with the same ``steps``/``shift`` evaluate the model at the same noise levels (UniPC nudges the first
one to ``1 - 1e-6`` to keep its log-SNR finite). A shift > 1 spends more steps at high noise, as video models want.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SOLVERS = ("unipc", "euler")
# The most sampling steps a request may ask for (ComfyUI's KSampler has the same bound): the schedule holds
# steps + 1 noise levels, so an absurd count would fail only after a long allocation, or run for ever.
MAX_SAMPLING_STEPS = 10_000

# diffusers' schedulers are parametrised by a training horizon; sigma = timestep / NUM_TRAIN_TIMESTEPS.
NUM_TRAIN_TIMESTEPS = 1000


def check_schedule_args(solver: str, steps: int, shift: float) -> None:
    """Raise a ValueError naming the bad argument (solver name, ``steps >= 1``, ``shift > 0``)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver: expected one of {', '.join(repr(s) for s in SOLVERS)}, got {solver!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps: expected an integer >= 1, got {steps!r}")
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift: expected a finite number > 0, got {shift!r}")


def base_sigmas(steps: int) -> np.ndarray:
    """The unshifted grid ``[steps]``: 1 down to just above 0, evenly spaced (Wan's ``sample_shift`` grid)."""
    return np.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, steps + 1)[:-1].astype(np.float32)


def shift_sigmas(sigmas, shift: float):
    """``shift * sigma / (1 + (shift - 1) * sigma)``: keeps 0 and 1 fixed, pushes the middle up when shift > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def make_scheduler(solver: str, steps: int, shift: float, device=None):
    """A diffusers scheduler for flow matching with ``steps`` model evaluations, ready to step from index 0.

    Returns a ``FlowMatchEulerDiscreteScheduler`` ("euler") or a second-order ``UniPCMultistepScheduler`` in flow
    mode ("unipc", bh2 with a lower-order final step, as Wan and Ovi use it). Its ``sigmas`` has ``steps + 1``
    entries ending in 0.
    """
    # diffusers is imported here, not with the module: ComfyUI builds every node's schema at start-up.
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    check_schedule_args(solver, steps, shift)
    shift = float(shift)
    if solver == "euler":
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
    else:
        scheduler = UniPCMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=shift, solver_order=2, solver_type="bh2", lower_order_final=True, final_sigmas_type="zero")
    # Given explicit (unshifted) sigmas, both schedulers apply their own shift exactly once; Euler's default grid
    # would otherwise be built from its already-shifted training sigmas and end at a doubly shifted sigma_min.
    scheduler.set_timesteps(sigmas=base_sigmas(steps), device=device)
    scheduler.set_begin_index(0)
    return scheduler


def flow_sigmas(steps: int, shift: float) -> torch.Tensor:
    """The noise levels [steps + 1] (1 down to a terminal 0) ``FlowSolver`` evaluates the model at, for samplers that
    take sigmas (ComfyUI's): the Wan/Ovi grid, so a guider run with them matches ``sample_av``."""
    return FlowSolver("euler", steps, shift).sigmas.clone()


class FlowSolver:
    """One modality's solver: the noise levels to evaluate the model at, and the state of a multistep update.

    SyncCFG denoises video and audio side by side, so each modality owns one ``FlowSolver``: a multistep solver
    (UniPC) keeps a history of past predictions that must not mix across streams.

    Usage::

        solver = FlowSolver("unipc", steps=30, shift=5.0)
        x = noise                                   # the sample at sigma = 1
        for i in range(solver.steps):
            v = model(x, solver.sigmas[i])          # velocity noise - x0, same shape as x
            x = solver.step(v, x, i)
    """

    def __init__(self, solver: str, steps: int, shift: float, device=None):
        self.solver = solver
        self.scheduler = make_scheduler(solver, steps, shift, device=device)
        self.steps = int(steps)
        self.shift = float(shift)
        # float32 on the CPU: sigmas are read as Python floats each step, a GPU copy would only add syncs.
        self.sigmas: torch.Tensor = self.scheduler.sigmas.detach().to("cpu", torch.float32)   # [steps + 1]
        self._next = 0

    def sigma(self, step_index: int) -> float:
        """Noise level the model is evaluated at in step ``step_index`` (0-based)."""
        return float(self.sigmas[step_index])

    def step(self, velocity: torch.Tensor, sample: torch.Tensor, step_index: int) -> torch.Tensor:
        """Advance ``sample`` (at ``sigmas[step_index]``) to ``sigmas[step_index + 1]`` given the model's velocity.

        ``velocity`` and ``sample`` have the same shape (any). Steps must be taken in order, once each: the
        scheduler carries state from one to the next.
        """
        if step_index != self._next:
            raise RuntimeError(f"FlowSolver.step: steps must be taken in order; expected step {self._next}, "
                               f"got {step_index}")
        if velocity.shape != sample.shape:
            raise ValueError(f"FlowSolver.step: velocity {tuple(velocity.shape)} and sample "
                             f"{tuple(sample.shape)} must have the same shape")
        timestep = self.scheduler.timesteps[step_index]
        out = self.scheduler.step(velocity, timestep, sample, return_dict=False)[0]
        self._next += 1
        return out.to(sample.dtype)
