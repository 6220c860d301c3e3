"""Text -> synchronized clip in one call: the composition the CLI uses and the nodes split into steps.

Also the checks a generation request gets before any work starts (``check_generation_args``, ``resolve_device``)
and the memory estimate that refuses a clip that cannot fit (``clip_host_bytes``, ``check_fits_memory``).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import torch

from .pipeline import AVPipeline
from ..guidance.sampling import StepCallback, sample_av
from ..guidance.schedules import MAX_SAMPLING_STEPS, check_schedule_args
from ..guidance.sync_cfg import SyncCFGGuidance


MAX_SEED = 0xFFFFFFFFFFFFFFFF
# Memory estimate of a clip (clip_host_bytes): its decoded frames [F, H, W, 3] and waveform [C, T] as float32, held
# twice (the decoder's output and the clamped copy written out). A lower bound on purpose, so it never refuses a
# clip that fits: latents, activations and the model come on top.
FLOAT32_BYTES = 4
DECODED_COPIES = 2
GIB = 2 ** 30


def check_seed(seed, what: str = "seed") -> int:
    """A seed is an integer in 0..MAX_SEED (what torch.Generator takes)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{what}: expected an integer in 0..{MAX_SEED}, received {seed!r}")
    return int(seed)


def check_generation_args(*, seconds=None, height_px=None, width_px=None, steps: int = 25, solver: str = "unipc",
                          shift: float = 3.0, seed: int = 0) -> None:
    """Refuse a request that cannot make a clip, before any model or codec runs (None: the caller's default,
    checked later). seconds: finite > 0; height_px / width_px: integers > 0 (the model's multiple is checked by
    ``AVPipeline.latent_shapes``); steps 1..MAX_SAMPLING_STEPS; solver and shift as the sampler takes them."""
    check_schedule_args(solver, steps, shift)
    if steps > MAX_SAMPLING_STEPS:
        raise ValueError(f"steps: expected at most {MAX_SAMPLING_STEPS} sampling steps, got {steps}")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, numbers.Real)
                                or not 0 < seconds < math.inf):
        raise ValueError(f"seconds: expected a finite length in seconds > 0, got {seconds!r}")
    for name, value in (("height", height_px), ("width", width_px)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise ValueError(f"{name}: expected a positive number of pixels, got {value!r}")
    check_seed(seed)


def resolve_device(device, what: str = "device") -> torch.device:
    """``device`` as a torch.device this PyTorch build can use, else a ValueError saying what it can use
    (``cuda`` on a CPU-only build fails here, not deep inside the first ``.to``)."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{what}: expected a device such as cpu, cuda or cuda:1, got {device!r}") from None
    kind = resolved.type
    if kind == "cpu":
        return resolved
    available = {"cuda": torch.cuda.is_available,
                 "mps": lambda: torch.backends.mps.is_available(),
                 "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available()}
    if kind not in available:
        raise ValueError(f"{what}: expected cpu, cuda[:N], mps or xpu, got {device!r}")
    if not available[kind]():
        build = "a CPU-only PyTorch build" if kind == "cuda" and torch.version.cuda is None else "no such device"
        raise ValueError(f"{what} {device}: not available here ({build}, torch {torch.__version__}); expected cpu, "
                         f"or a PyTorch build and machine with {kind.upper()}")
    if kind == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"{what} {device}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered "
                         f"from 0")
    return resolved


def clip_host_bytes(seconds: float, height_px: float, width_px: float, fps: float, sample_rate_hz: float = 0.0,
                    audio_channels: int = 1, clips: float = 1) -> float:
    """Lower bound (bytes, a float: absurd sizes stay comparable) of the CPU memory ``clips`` clips take as
    pixels and samples: DECODED_COPIES float32 copies of frames [seconds * fps, H, W, 3] and waveform
    [C, seconds * rate]."""
    seconds, height_px, width_px, clips = (_as_float(v) for v in (seconds, height_px, width_px, clips))
    elements = seconds * fps * height_px * width_px * 3 + seconds * sample_rate_hz * audio_channels
    return clips * DECODED_COPIES * FLOAT32_BYTES * elements


def _as_float(value) -> float:
    try:
        return float(value)
    except OverflowError:       # an integer beyond float range (a 400-digit --width): more than any memory
        return math.inf


def available_memory_bytes() -> tuple[float | None, str]:
    """(bytes, what they are) of the CPU memory a new allocation can get: Linux's MemAvailable, else the physical
    memory; (None, ...) where neither can be read (then nothing is refused)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024, "available memory (MemAvailable)"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "physical memory"
    except (AttributeError, ValueError, OSError):
        return None, "unknown memory"


def check_fits_memory(needed_bytes: float, what: str, detail: str) -> None:
    """Refuse a request whose memory lower bound ``needed_bytes`` (see ``clip_host_bytes``) exceeds what the
    machine has; ``what`` names the inputs to lower, ``detail`` says what was estimated."""
    limit, label = available_memory_bytes()
    if limit is not None and not needed_bytes <= limit:
        raise ValueError(f"{what}: {detail} need at least {needed_bytes / GIB:.3g} GiB, more than this machine's "
                         f"{limit / GIB:.3g} GiB of {label}; expected a smaller request")


@dataclass
class GeneratedClip:
    frames: torch.Tensor        # [B, F, H, W, 3] in 0..1
    waveform: torch.Tensor      # [B, C, T] in -1..1
    fps: float
    sample_rate_hz: int

    @property
    def seconds(self) -> float:
        return self.frames.shape[1] / self.fps


def initial_noise(video_shape, audio_shape, seed: int, device=None, dtype=torch.float32
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard normal noise for both latents, drawn on the CPU so a seed gives the same clip on every device."""
    seed = check_seed(seed)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    video = torch.randn(video_shape, generator=generator)
    audio = torch.randn(audio_shape, generator=generator)
    return video.to(device, dtype), audio.to(device, dtype)


def generate_clip(pipeline: AVPipeline, video_prompt: str, audio_prompt: str | None = None, *,
                  seconds: float | None = None, height_px: int | None = None, width_px: int | None = None,
                  seed: int = 0, steps: int = 25,
                  solver: str = "unipc", shift: float = 3.0, guidance: SyncCFGGuidance | None = None,
                  video_negative: str = "", audio_negative: str = "", callback: StepCallback | None = None,
                  progress: bool = False) -> GeneratedClip:
    """One clip for a prompt; a size left out (None) is the pipeline's ``default_clip``."""
    default = pipeline.default_clip
    seconds = default.seconds if seconds is None else seconds
    height_px = default.height_px if height_px is None else height_px
    width_px = default.width_px if width_px is None else width_px
    if not video_prompt or not video_prompt.strip():
        raise ValueError("video_prompt is empty: describe the scene to generate")
    check_generation_args(seconds=seconds, height_px=height_px, width_px=width_px, steps=steps, solver=solver,
                          shift=shift, seed=seed)
    vc, ac = pipeline.video_codec, pipeline.audio_codec
    check_fits_memory(clip_host_bytes(seconds, height_px, width_px, vc.fps, ac.sample_rate, ac.audio_channels),
                      "seconds / width / height", f"the decoded frames and sound of a {seconds:g} s clip of "
                      f"{width_px}x{height_px} px at {vc.fps:g} fps")
    audio_prompt = audio_prompt if audio_prompt and audio_prompt.strip() else video_prompt
    guidance = guidance or SyncCFGGuidance()
    model = pipeline.model
    device, dtype = next(model.parameters()).device, model.working_dtype()
    video_shape, audio_shape = pipeline.latent_shapes(seconds, height_px, width_px)
    texts = pipeline.encode_prompts([video_prompt, audio_prompt, video_negative, audio_negative])
    pick = lambda i: type(texts)(texts.embeddings[i:i + 1].to(device), texts.lengths[i:i + 1].to(device))  # noqa: E731
    positive, negative = (pick(0), pick(1)), (pick(2), pick(3))
    anchors = pipeline.anchors(video_shape, audio_shape, device=device, dtype=dtype)
    noise_video, noise_audio = initial_noise(video_shape, audio_shape, seed, device, dtype)
    video, audio = sample_av(model, noise_video, noise_audio, positive, negative if guidance.needs_negative else None,
                             anchors if guidance.needs_anchors else None, guidance, steps=steps, solver=solver,
                             shift=shift, callback=callback, progress=progress)
    return latents_to_clip(pipeline, video, audio)


def latents_to_clip(pipeline: AVPipeline, video_latent: torch.Tensor, audio_latent: torch.Tensor) -> GeneratedClip:
    """Latents (video [B, Cv, Fv, Hv, Wv], audio [B, La, Ca]) -> the clips, each sound exactly as long as its
    frames last (cut, or padded with silence), so a batch played clip after clip keeps every sound with its
    frames."""
    frames, waveform = pipeline.decode(video_latent, audio_latent)        # [B, F, H, W, 3], [B, C, T]
    fps, rate = pipeline.video_codec.fps, pipeline.audio_codec.sample_rate
    samples = round(frames.shape[1] / fps * rate)
    if waveform.shape[-1] >= samples:
        waveform = waveform[..., :samples]
    else:
        waveform = torch.nn.functional.pad(waveform, (0, samples - waveform.shape[-1]))
    return GeneratedClip(frames=frames.float().cpu(), waveform=waveform.float().cpu(), fps=fps, sample_rate_hz=rate)
