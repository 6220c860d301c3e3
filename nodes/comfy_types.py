"""The values SyncAV nodes pass each other, as ComfyUI types, and the conventions of ComfyUI's own IMAGE/AUDIO.

Shared by every node module (with ``comfy_bridge``); imports ComfyUI's node API only, never a node module. ComfyUI
checks the type of every link, so a node receives only what these types promise and does not check it again;
MODEL, IMAGE and AUDIO are shared with every other node pack, so those are checked where they enter the library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from comfy_api.latest import io
from torch import nn

from ..generation.pipeline import AVPipeline
from ..guidance.sync_cfg import DEFAULT_ANCHORS, SyncAnchors
from ..model.joint import JointModel
from ..negatives.curriculum import Curriculum
from ..text.interface import EncodedText

CATEGORY = "SyncAV"

# The values SyncAV nodes pass each other (ComfyUI checks every link's type; nodes do not check them again).
CODECS = io.Custom("SYNCAV_CODECS")
TEXT_ENCODER = io.Custom("SYNCAV_TEXT_ENCODER")
CONDITIONING = io.Custom("SYNCAV_CONDITIONING")
LATENT = io.Custom("SYNCAV_LATENT")
DATASET = io.Custom("SYNCAV_DATASET")
NEGATIVES = io.Custom("SYNCAV_NEGATIVES")


def output(io_type, name: str, tooltip: str, is_list: bool = False):
    """An output shown as ``name`` on every ComfyUI version (without ``display_name`` 0.3.64 shows the type). Its id
    gets a suffix: the schema wants output ids apart from input ids (the sampler takes and gives a ``latent``).
    is_list: the node returns a list for it, and ComfyUI runs each node fed by it once per item."""
    return io_type.Output(f"{name}_out", display_name=name, tooltip=tooltip, is_output_list=is_list)


def one_value(values: list, name: str):
    """The setting of a node that takes its inputs as whole lists (``is_input_list``) where one value is meant: a
    widget gives a list of one; a linked list must hold one value throughout."""
    if not values:
        raise ValueError(f"{name}: expected a value, received an empty list")
    if any(v != values[0] for v in values[1:]):
        raise ValueError(f"{name}: expected one value for all clips, received a list of {len(values)} that differ: "
                         f"{values[:4]!r}")
    return values[0]


# ------------------------------------------------------------------------------------------------ shared inputs

def guidance_scale_input(name: str, default: float, tooltip: str):
    """A guidance scale widget (1 = off), the same range on every SyncCFG node."""
    return io.Float.Input(name, default=default, min=0.0, max=30.0, step=0.1, round=0.01, tooltip=tooltip)


def anchors_input(optional: bool = False):
    """The sync-anchor choice (``SyncAnchors``) of the SyncCFG nodes."""
    return io.Combo.Input(
        "anchors", options=[a.value for a in SyncAnchors], default=DEFAULT_ANCHORS.value, optional=optional,
        tooltip="What each stream's sync guidance pushes it away from. audio_alone (default): the video from its "
                "prediction beside muted audio, the audio from the audio tower run alone (3 passes a step + the "
                "small tower). harmony (the paper's): the audio from its prediction beside a static video (4 "
                "passes). cross_modal_cut: one pass with the cross-modal attention cut anchors both (3 passes, "
                "LTX-2's modality guidance).")


def slg_blocks_input():
    """Skip-layer guidance's block list (``guidance.sync_cfg.parse_block_list`` reads it)."""
    return io.String.Input("slg_blocks", default="", multiline=False,
                           tooltip="Skip-layer guidance: comma-separated block indices (e.g. '1, 2') skipped in the "
                                   "negative pass. Empty: off. Needs a text scale other than 1.")


# ------------------------------------------------------------------------------------------------ shared values

class SyncAVCodecs:
    """The SYNCAV_CODECS value: the video and audio codecs of a loaded pipeline (latent shapes, SyncCFG anchors,
    decoding). Holds the ``AVPipeline`` the loader built."""

    def __init__(self, pipeline: AVPipeline):
        self.pipeline = pipeline

    video_codec = property(lambda self: self.pipeline.video_codec)
    audio_codec = property(lambda self: self.pipeline.audio_codec)
    fps = property(lambda self: float(self.pipeline.video_codec.fps))
    sample_rate = property(lambda self: int(self.pipeline.audio_codec.sample_rate))
    pixel_multiple = property(lambda self: self.pipeline.pixel_multiple)   # frame sides are multiples of this

    def latent_shapes(self, seconds: float, height: int, width: int, batch: int = 1):
        """(video [B, Cv, Fv, Hv, Wv], audio [B, La, Ca]) latent shapes of a clip."""
        return self.pipeline.latent_shapes(seconds, height, width, batch)

    def anchors(self, video_shape, audio_shape, device=None, dtype=torch.float32):
        """(static_video [1, Cv, Fv, Hv, Wv], silence [1, La, Ca]): SyncCFG's clean anchor latents."""
        return self.pipeline.anchors(video_shape, audio_shape, device=device, dtype=dtype)

    def decode(self, video_latent: torch.Tensor, audio_latent: torch.Tensor):
        """-> (frames [B, F, H, W, 3] in 0..1, waveform [B, C, T] in -1..1), float32 on the CPU."""
        return self.pipeline.decode(video_latent, audio_latent)

    def __repr__(self) -> str:
        return (f"SyncAVCodecs({self.pipeline.name}: {type(self.video_codec).__name__} {self.fps:g} fps, "
                f"{type(self.audio_codec).__name__} {self.sample_rate} Hz)")


@dataclass
class SyncAVConditioning:
    """The SYNCAV_CONDITIONING value: (video, audio) encoded prompts, positive and negative, batch 1 each."""

    positive: tuple[EncodedText, EncodedText]
    negative: tuple[EncodedText, EncodedText]
    prompts: dict[str, str] = field(default_factory=dict)   # the texts, for display and debugging

    def __repr__(self) -> str:
        return f"SyncAVConditioning({self.prompts!r})"


def joint_model_of(model) -> JointModel:
    """The JointModel inside a MODEL from SyncAV Loader; a clear error for any other MODEL (the type MODEL is
    shared with every image and video model of ComfyUI, so ComfyUI's link check cannot tell them apart)."""
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(unwrapped(inner) if inner is not None else None, JointModel):
        what = type(getattr(model, "model", model)).__name__
        raise ValueError(f"model: expected the MODEL output of SyncAV Loader (a joint audio-video model), "
                         f"received a {what}; image/video models from other loaders cannot be sampled here")
    return inner


def check_images(images, name: str = "images") -> torch.Tensor:
    """An IMAGE ``[F, H, W, 3]`` (frames in 0..1); a ValueError naming the input otherwise."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name}: expected IMAGE frames (a tensor [F, H, W, 3] in 0..1), received "
                         f"{type(images).__name__}")
    if images.dim() != 4 or images.shape[-1] != 3 or min(images.shape) < 1:
        raise ValueError(f"{name}: expected IMAGE frames [F, H, W, 3] (RGB in 0..1), received shape "
                         f"{list(images.shape)}")
    return images


def check_audio(audio, name: str = "audio") -> tuple[torch.Tensor, int]:
    """An AUDIO dict ``{"waveform": [B, C, T], "sample_rate": int}`` -> (waveform, sample rate in Hz)."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        got = sorted(audio) if isinstance(audio, dict) else type(audio).__name__
        raise ValueError(f"{name}: expected AUDIO (a dict with 'waveform' [B, C, T] and 'sample_rate' in Hz), "
                         f"received {got}")
    waveform, rate = audio["waveform"], audio["sample_rate"]
    if not isinstance(waveform, torch.Tensor) or waveform.dim() != 3 or waveform.shape[-1] < 1:
        what = list(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
        raise ValueError(f"{name}: 'waveform' must be a tensor [B, C, T] (clips, channels, samples), received {what}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise ValueError(f"{name}: 'sample_rate' must be a positive number of Hz, received {rate!r}")
    return waveform, int(rate)


@dataclass(frozen=True)
class SyncAVNegativeSpec:
    """The SYNCAV_NEGATIVES value: the curriculum the trainer draws its losers from (mode, families and rule
    choice already applied)."""

    curriculum: Curriculum
    rules: tuple[str, ...] | None = None        # the rules the user kept (None: all of the curriculum's)


# ------------------------------------------------------------------------------------------------ MODEL

@dataclass(frozen=True)
class JointModelConfig:
    """What ComfyUI reads of a model's config. ``unet_config`` for its LoRA loaders: none of its UNet, MMDiT or Flux
    key conversions applies to the joint model, so it is empty and the generic ``diffusion_model.<module path>`` keys
    (a SyncAV LoRA file's own) cover every layer: core's Load LoRA (model only) then patches the joint model.
    ``sampling_settings``: the flow-matching shift ComfyUI's model sampling (and ModelSamplingSD3) starts from."""

    unet_config: dict = field(default_factory=dict)
    sampling_settings: dict = field(default_factory=dict)


class PackedLatentFormat:
    """What ComfyUI reads of a latent format, for the packed audio-video latent [B, Cv, F, H, W + Wa]
    (generation/packed_latent.py): its channels and rank (so an empty latent is left as it is), no scaling (the
    codecs normalise their latents), and the codec's latent-to-RGB map for previews (the audio shows as a band at
    the right edge)."""

    latent_dimensions = 3
    scale_factor = 1.0
    taesd_decoder_name = None

    def __init__(self, latent_channels: int, rgb_factors=None, rgb_bias=None):
        self.latent_channels = int(latent_channels)
        self.latent_rgb_factors = rgb_factors
        self.latent_rgb_factors_bias = rgb_bias

    def process_in(self, latent):
        return latent

    def process_out(self, latent):
        return latent


def av_latent(layout, video: torch.Tensor, audio: torch.Tensor, nested_class=None) -> dict:
    """A ComfyUI LATENT of a clip: ``samples`` is current ComfyUI's NestedTensor((video, audio)) where it exists
    (``nested_class``, from ``comfy_bridge.nested_tensor_class()``: graphs mixing SyncAV and core's audio-video
    latent nodes then work), else the packed tensor (``layout.pack``, generation/packed_latent.py)."""
    samples = nested_class([video, audio]) if nested_class is not None else layout.pack(video, audio)
    return {"samples": samples}


def split_av_latent(latent, pipeline) -> tuple[torch.Tensor, torch.Tensor]:
    """(video [B, Cv, F, H, W], audio [B, La, Ca]) of a LATENT from SyncAV Empty AV Latent through any sampler
    (nested or packed); a clear error for a latent of another model."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if getattr(samples, "is_nested", False):
        video, audio = samples.unbind()[:2]
        return video, audio
    if not isinstance(samples, torch.Tensor):
        raise ValueError("samples: expected a LATENT (a dict with 'samples'), received "
                         f"{type(latent).__name__}")
    return pipeline.packed_layout(tuple(samples.shape)).unpack(samples)


def unwrapped(module: nn.Module) -> nn.Module:
    """The module under a ``torch.compile`` wrapper (core's TorchCompileModel patches the diffusion model so)."""
    return getattr(module, "_orig_mod", module)


class SyncAVModel(nn.Module):
    """What the patcher wraps: a module whose ``diffusion_model`` is the JointModel, with what ComfyUI's sampling
    stack reads of a model (``model_sampling`` is set by ``comfy_bridge.wrap_model`` inside ComfyUI).

    State-dict keys therefore read ``diffusion_model.<module path>``, ComfyUI's convention for LoRA key maps.
    ModelPatcher assigns ``.device`` itself, so it is a plain attribute here.
    """

    def __init__(self, diffusion_model: nn.Module, device: torch.device | None = None, shift: float = 3.0,
                 latent_format: PackedLatentFormat | None = None):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.device = device
        self.model_config = JointModelConfig(sampling_settings={"shift": float(shift)})
        channels = unwrapped(diffusion_model).config.video.in_channels
        self.latent_format = latent_format or PackedLatentFormat(channels)

    def get_dtype(self) -> torch.dtype:
        """Dtype the weights are stored in (ModelPatcher.model_dtype reads it)."""
        return next(self.diffusion_model.parameters()).dtype

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)

    def memory_required(self, input_shape, cond_shapes=None) -> float:
        """Bytes of activations a guided step needs beyond the weights, for ComfyUI's model management.

        input_shape: the packed latent's [B, Cv, F, H, W + Wa] (ComfyUI doubles B for its two CFG rows; SyncCFG
        runs up to four, hence 2 B rows here). Counts each token's widest tensors (the FFN's hidden layer and the
        attention projections) in the compute dtype; the audio columns are counted as video tokens, which
        over-states a little rather than under."""
        config = unwrapped(self.diffusion_model).config
        pt, ph, pw = config.video.patch_size
        tokens = math.prod(input_shape[2:]) // (pt * ph * pw)
        rows = 2 * int(input_shape[0])
        width = config.video.ffn_dim + 6 * config.video.dim
        return float(rows * tokens * width * 2)

    def forward(self, *args, **kwargs):
        return self.diffusion_model(*args, **kwargs)


class StandInPatcher:
    """Minimal stand-in for ``comfy.model_patcher.ModelPatcher`` outside ComfyUI: holds ``.model``, loads nothing."""

    def __init__(self, model: nn.Module, load_device: torch.device, offload_device: torch.device):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        if getattr(model, "device", None) is None:
            model.device = offload_device

    def clone(self) -> "StandInPatcher":
        return StandInPatcher(self.model, self.load_device, self.offload_device)

    def model_size(self) -> int:
        return sum(t.nelement() * t.element_size() for t in self.model.state_dict().values())

    def __repr__(self) -> str:
        return f"StandInPatcher({type(self.model).__name__}, load_device={self.load_device})"
