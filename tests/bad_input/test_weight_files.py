"""Bad weight files through every loader: the joint model, LoRA, the codecs, the text encoders and ``convert``.

Every bad file is built here, in ``tmp_path``, from tiny networks and hand-written safetensors headers. Each case
must get one ``CheckpointError`` (a ``ValueError``) that names the file and what was wrong; besides the message, every
case checks that nothing was written next to the inputs and that no pickle code ran (the marker file a malicious
``__reduce__`` would create never appears).
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bad_input.harness import BadInput, expect_cli_error, expect_error, files_under, params
from comfyui_syncav.codecs.bigvgan import BigVGANConfig, BigVGANGenerator, load_bigvgan, unfold_weight_norm
from comfyui_syncav.model.checkpoint import CONFIG_METADATA_KEY, load_joint_model, save_joint_model
from comfyui_syncav.codecs.mmaudio import MMAudioCodec
from comfyui_syncav.codecs.wan import VAE_CONFIG_METADATA_KEY, WanVideoCodec
from comfyui_syncav.ovi.convert import convert_checkpoint
from comfyui_syncav.runtime.fp8 import layer_weight_keys
from comfyui_syncav.runtime.lora import apply_lora, check_lora_fits, load_lora
from comfyui_syncav.codecs.mmaudio_vae import MMAudioVAE, MMAudioVAEConfig, load_mmaudio_vae
from comfyui_syncav.files.safetensors_io import count_non_finite, save_tensors_atomic
from comfyui_syncav.text.embedded import TinyTextEncoder
from micro_models import micro_model

pytestmark = pytest.mark.usefixtures("one_thread")

MARKER = "PICKLE_CODE_RAN"          # the file a malicious pickle's __reduce__ would create
TINY_WAN_WIDTHS = {"base_dim": 4, "decoder_base_dim": 8}
LORA_MODULES = {"video_model.blocks.0.self_attn.q": (16, 16), "audio_model.blocks.1.ffn.0": (32, 16)}  # (out, in)


class WritesMarker:
    """Unpickling this would create ``path`` (pickle calls ``open(path, "w")``): the loaders must never do it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


# ------------------------------------------------------------------------------------------- building files

def raw_safetensors(path: Path, header, data: bytes = b"", header_len: int | None = None) -> Path:
    """A safetensors file from a hand-written header (dict, list or bytes) and data, with an optional lying
    header length."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


def f32(key_offsets: dict[str, tuple[list[int], int, int]]) -> dict:
    """Header entries of F32 tensors: {key: (shape, begin, end)}."""
    return {k: {"dtype": "F32", "shape": shape, "data_offsets": [b, e]} for k, (shape, b, e) in key_offsets.items()}


def lora_tensors(rank: int = 2, alpha: float = 2.0, modules=LORA_MODULES) -> dict[str, torch.Tensor]:
    """A LoRA for the micro model in the package's key convention: A [rank, in], B [out, rank], alpha."""
    generator = torch.Generator().manual_seed(3)
    tensors = {}
    for path, (out, inn) in modules.items():
        tensors[f"diffusion_model.{path}.lora_A.weight"] = torch.randn(rank, inn, generator=generator)
        tensors[f"diffusion_model.{path}.lora_B.weight"] = torch.randn(out, rank, generator=generator)
        tensors[f"diffusion_model.{path}.alpha"] = torch.tensor(float(alpha))
    return tensors


def poisoned(state: dict[str, torch.Tensor], key: str, value=float("nan")) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with one value of ``key`` replaced (NaN by default)."""
    out = {k: v.clone() for k, v in state.items()}
    out[key].view(-1)[0] = value
    return out


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Valid tiny files and state dicts every case starts from (checked to load in ``test_the_good_files_load``)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan

    from comfyui_syncav.codecs.wan import WAN22_VAE_CONFIG, wan22_vae_state_dict_to_original

    folder = tmp_path_factory.mktemp("good")
    model = micro_model()
    joint = folder / "joint.safetensors"
    save_joint_model(model, joint)
    lora = folder / "lora.safetensors"
    save_tensors_atomic(lora_tensors(), lora)
    torch.manual_seed(0)
    with torch.no_grad():
        mmaudio = {k: v.clone() for k, v in MMAudioVAE(MMAudioVAEConfig(hidden_dim=8)).state_dict().items()}
        vocoder = {k: v.clone() for k, v in BigVGANGenerator(BigVGANConfig(upsample_initial_channel=64))
                   .state_dict().items()}
        wan = wan22_vae_state_dict_to_original(AutoencoderKLWan(**{**WAN22_VAE_CONFIG, **TINY_WAN_WIDTHS})
                                               .state_dict())
    files = SimpleNamespace(model=model, joint=joint, lora=lora, mmaudio=mmaudio, vocoder=vocoder, wan=wan,
                            vae_file=folder / "vae.safetensors", vocoder_file=folder / "vocoder.safetensors",
                            wan_file=folder / "wan.safetensors", text_file=folder / "text.safetensors")
    save_tensors_atomic(mmaudio, files.vae_file)
    save_tensors_atomic(vocoder, files.vocoder_file)
    save_tensors_atomic(wan, files.wan_file, {VAE_CONFIG_METADATA_KEY: json.dumps(TINY_WAN_WIDTHS)})
    TinyTextEncoder(dim=16, vocab_size=64, num_layers=1, num_heads=2, ffn_dim=32, max_length=8).save(files.text_file)
    return files


def joint_state(good) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in good.model.state_dict().items()}


def joint_metadata(good) -> dict[str, str]:
    return {CONFIG_METADATA_KEY: good.model.config.to_json()}


# ------------------------------------------------------------------------------------------- the cases

CASES: list[BadInput] = []
_MAKERS = {}


def case(id: str, component: str, expected: str):
    """Register a case: the decorated function builds its bad input in ``tmp_path`` and returns the call."""
    def register(make):
        CASES.append(BadInput(id, component, expected))
        _MAKERS[id] = make
        return make
    return register


# --- malformed safetensors headers (each once through a loader; all loaders share read_header)

@case("zero-byte-file", "load_joint_model", r"empty\.safetensors: empty file \(0 bytes\); expected a safetensors")
def _(tmp_path, good):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    return lambda: load_joint_model(tmp_path / "empty.safetensors")


@case("directory-as-file", "load_lora", r"folder\.safetensors: is a folder; expected a \.safetensors file")
def _(tmp_path, good):
    (tmp_path / "folder.safetensors").mkdir()
    return lambda: load_lora(tmp_path / "folder.safetensors")


@case("header-is-a-list", "load_joint_model", r"list\.safetensors: not a safetensors file \(its header is a JSON "
                                              r"list, expected an object\)")
def _(tmp_path, good):
    built = raw_safetensors(tmp_path / "list.safetensors", b"[1, 2, 3]   ")
    return lambda: load_joint_model(built)


@case("entry-without-data-offsets", "load_joint_model",
      r"nooffsets\.safetensors: header entry 'w': expected the fields dtype, shape, data_offsets, found "
      r"\['dtype', 'shape'\]")
def _(tmp_path, good):
    path = raw_safetensors(tmp_path / "nooffsets.safetensors", {"w": {"dtype": "F32", "shape": [1]}}, bytes(4))
    return lambda: load_joint_model(path)


@case("header-not-json", "load_lora", r"garbage\.safetensors: not a safetensors file \(its header is not JSON\)")
def _(tmp_path, good):
    built = raw_safetensors(tmp_path / "garbage.safetensors", b"{\xff\xfe not json")
    return lambda: load_lora(built)


@case("header-length-past-the-end", "load_joint_model",
      r"long\.safetensors: truncated: its header announces 5000 bytes, the file has \d+ in all")
def _(tmp_path, good):
    header = f32({"w": ([1], 0, 4)})
    built = raw_safetensors(tmp_path / "long.safetensors", header, bytes(4), 5000)
    return lambda: load_joint_model(built)


@case("header-length-too-short", "load_joint_model", r"short\.safetensors: not a safetensors file \(its header is "
                                                     r"not JSON\)")
def _(tmp_path, good):
    header = f32({"w": ([1], 0, 4)})
    built = raw_safetensors(tmp_path / "short.safetensors", header, bytes(4), 10)
    return lambda: load_joint_model(built)


@case("duplicate-key", "load_joint_model", r"twice\.safetensors: the header names 'w' twice")
def _(tmp_path, good):
    raw = (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
           b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}')
    built = raw_safetensors(tmp_path / "twice.safetensors", raw, bytes(8))
    return lambda: load_joint_model(built)


@case("empty-key", "load_lora", r"nameless\.safetensors: tensor name '' in the header is empty or holds control")
def _(tmp_path, good):
    built = raw_safetensors(tmp_path / "nameless.safetensors", f32({"": ([1], 0, 4)}), bytes(4))
    return lambda: load_lora(built)


@case("unknown-dtype", "load_joint_model", r"f7\.safetensors: tensor 'w' has dtype 'F7'; expected one of .*BF16")
def _(tmp_path, good):
    header = {"w": {"dtype": "F7", "shape": [1], "data_offsets": [0, 4]}}
    built = raw_safetensors(tmp_path / "f7.safetensors", header, bytes(4))
    return lambda: load_joint_model(built)


@case("negative-shape", "load_lora", r"negative\.safetensors: tensor 'w' has shape \[-1, 4\]; expected a list of "
                                     r"sizes >= 0")
def _(tmp_path, good):
    built = raw_safetensors(tmp_path / "negative.safetensors", f32({"w": ([-1, 4], 0, 16)}),
                                             bytes(16))
    return lambda: load_lora(built)


@case("shape-and-offsets-disagree", "load_joint_model",
      r"span\.safetensors: tensor 'w': F32 \[2, 2\] takes 16 bytes, its data_offsets \[0, 8\] span 8")
def _(tmp_path, good):
    built = raw_safetensors(tmp_path / "span.safetensors", f32({"w": ([2, 2], 0, 8)}),
                                                    bytes(8))
    return lambda: load_joint_model(built)


@case("overlapping-offsets", "load_joint_model", r"overlap\.safetensors: tensors 'a' and 'b' overlap in the data "
                                                 r"section")
def _(tmp_path, good):
    header = f32({"a": ([2], 0, 8), "b": ([2], 4, 12)})
    built = raw_safetensors(tmp_path / "overlap.safetensors", header, bytes(12))
    return lambda: load_joint_model(built)


@case("offsets-outside-the-file", "load_lora", r"outside\.safetensors: truncated: the header describes \d+ bytes, "
                                               r"the file has \d+")
def _(tmp_path, good):
    header = f32({"a": ([2], 0, 8), "b": ([1000], 8, 4008)})
    built = raw_safetensors(tmp_path / "outside.safetensors", header, bytes(8))
    return lambda: load_lora(built)


@case("gap-between-tensors", "load_joint_model", r"gap\.safetensors: bytes 4\.\.8 of the data section belong to no "
                                                 r"tensor \(before 'b'\)")
def _(tmp_path, good):
    header = f32({"a": ([1], 0, 4), "b": ([1], 8, 12)})
    built = raw_safetensors(tmp_path / "gap.safetensors", header, bytes(12))
    return lambda: load_joint_model(built)


@case("bytes-after-the-data", "load_joint_model", r"trailing\.safetensors: 100 bytes after the last tensor's data")
def _(tmp_path, good):
    data = good.joint.read_bytes() + bytes(100)
    (tmp_path / "trailing.safetensors").write_bytes(data)
    return lambda: load_joint_model(tmp_path / "trailing.safetensors")


@case("metadata-not-strings", "load_joint_model", r"meta\.safetensors: header __metadata__ must map names to "
                                                  r"strings")
def _(tmp_path, good):
    header = {"__metadata__": {"syncav_config": {"dim": 16}}, **f32({"w": ([1], 0, 4)})}
    built = raw_safetensors(tmp_path / "meta.safetensors", header, bytes(4))
    return lambda: load_joint_model(built)


# --- the joint model

@case("config-metadata-not-json", "load_joint_model",
      r"badconfig\.safetensors: metadata 'syncav_config' is not a joint model config .*found '\{not json'")
def _(tmp_path, good):
    save_tensors_atomic(joint_state(good), tmp_path / "badconfig.safetensors", {CONFIG_METADATA_KEY: "{not json"})
    return lambda: load_joint_model(tmp_path / "badconfig.safetensors")


@case("config-metadata-of-another-size", "load_joint_model",
      r"huge\.safetensors: metadata 'syncav_config' describes 100000 blocks of width 16, the tensors 2 blocks")
def _(tmp_path, good):
    config = json.loads(good.model.config.to_json())
    config["video"]["num_layers"] = config["audio"]["num_layers"] = 100000     # would build 100k blocks first
    save_tensors_atomic(joint_state(good), tmp_path / "huge.safetensors", {CONFIG_METADATA_KEY: json.dumps(config)})
    return lambda: load_joint_model(tmp_path / "huge.safetensors")


@case("config-metadata-negative-eps", "load_joint_model",
      r"eps\.safetensors: metadata syncav_config\.audio\.eps is -1e-06; expected a positive float below 1")
def _(tmp_path, good):
    config = json.loads(good.model.config.to_json())
    config["audio"]["eps"] = -1e-6                  # loads, then every forward divides by a negative norm
    save_tensors_atomic(joint_state(good), tmp_path / "eps.safetensors", {CONFIG_METADATA_KEY: json.dumps(config)})
    return lambda: load_joint_model(tmp_path / "eps.safetensors")


@case("integer-weights", "load_joint_model", r"int\.safetensors: 169 tensors are not floating point, e.g. "
                                             r"\S+ \(I32\).*weights are stored as F64, F32")
def _(tmp_path, good):
    state = {k: v.round().to(torch.int32) for k, v in joint_state(good).items()}
    save_tensors_atomic(state, tmp_path / "int.safetensors", joint_metadata(good))
    return lambda: load_joint_model(tmp_path / "int.safetensors")


@case("nan-joint-weights", "load_joint_model", r"nan\.safetensors: tensor 'video_model\.blocks\.1\.ffn\.2\.weight' "
                                               r"holds 1 NaN/inf values \(of 512\); expected finite weights")
def _(tmp_path, good):
    state = poisoned(joint_state(good), "video_model.blocks.1.ffn.2.weight")
    save_tensors_atomic(state, tmp_path / "nan.safetensors", joint_metadata(good))
    return lambda: load_joint_model(tmp_path / "nan.safetensors")


@case("inf-joint-weights-fp16", "load_joint_model",
      r"inf16\.safetensors: tensor 'audio_model\.head\.head\.bias' holds 1 NaN/inf values")
def _(tmp_path, good):
    state = {k: v.half() for k, v in poisoned(joint_state(good), "audio_model.head.head.bias", float("inf")).items()}
    save_tensors_atomic(state, tmp_path / "inf16.safetensors", joint_metadata(good))
    return lambda: load_joint_model(tmp_path / "inf16.safetensors")


@case("nan-joint-weights-fp8", "load_joint_model",
      r"fp8\.safetensors: tensor 'video_model\.blocks\.0\.self_attn\.q\.weight' holds 1 NaN/inf values")
def _(tmp_path, good):
    state, fp8 = joint_state(good), layer_weight_keys(good.model)
    state = {k: v.to(torch.float8_e4m3fn) if k in fp8 else v for k, v in state.items()}
    state["video_model.blocks.0.self_attn.q.weight"].view(torch.uint8).view(-1)[5] = 0x7F    # e4m3fn's NaN
    save_tensors_atomic(state, tmp_path / "fp8.safetensors", joint_metadata(good))
    return lambda: load_joint_model(tmp_path / "fp8.safetensors")


@case("pickle-as-joint-model", "load_joint_model", r"model\.ckpt: not a safetensors file .*pickles are not loaded")
def _(tmp_path, good):
    torch.save({"w": torch.zeros(2), "hook": WritesMarker(tmp_path / MARKER)}, tmp_path / "model.ckpt")
    return lambda: load_joint_model(tmp_path / "model.ckpt")


@case("vae-as-joint-model", "load_joint_model", r"vae\.safetensors: not a joint audio-video \(Ovi-layout\) "
                                                r"checkpoint: missing video_model\.patch_embedding\.weight")
def _(tmp_path, good):
    return lambda: load_joint_model(good.vae_file)


@case("text-encoder-as-joint-model", "load_joint_model", r"text\.safetensors: not a joint audio-video")
def _(tmp_path, good):
    return lambda: load_joint_model(good.text_file)


# --- LoRA

def _save_lora(tmp_path, name, tensors, metadata=None) -> Path:
    save_tensors_atomic(tensors, tmp_path / name, metadata)
    return tmp_path / name


@case("lora-rank-0", "load_lora", r"rank0\.safetensors: 2 malformed LoRA modules: .*video_model\.blocks\.0\.self_attn"
                                  r"\.q: rank 0 \(lora_A \[0, 16\]\): expected a rank >= 1")
def _(tmp_path, good):
    built = _save_lora(tmp_path, "rank0.safetensors", lora_tensors(rank=0))
    return lambda: load_lora(built)


@case("lora-negative-rank-in-spec", "load_lora",
      r"spec\.safetensors: metadata 'lora_spec' is not a LoRA spec \(LoraSpec\.rank must be >= 1, got -2\)")
def _(tmp_path, good):
    spec = json.dumps({"rank": -2, "alpha": 2.0, "dropout": 0.0, "targets": ["attention"], "towers": ["video"]})
    built = _save_lora(tmp_path, "spec.safetensors", lora_tensors(), {"lora_spec": spec})
    return lambda: load_lora(built)


@case("lora-spec-rank-disagrees", "load_lora",
      r"rank8\.safetensors: metadata 'lora_spec' says rank 8, the tensors have rank 2")
def _(tmp_path, good):
    spec = json.dumps({"rank": 8, "alpha": 8.0, "dropout": 0.0, "targets": ["attention"], "towers": ["video"]})
    built = _save_lora(tmp_path, "rank8.safetensors", lora_tensors(), {"lora_spec": spec})
    return lambda: load_lora(built)


@case("lora-alpha-0", "load_lora", r"alpha0\.safetensors: 2 malformed LoRA modules: .*alpha must be > 0 .*got 0")
def _(tmp_path, good):
    built = _save_lora(tmp_path, "alpha0.safetensors", lora_tensors(alpha=0.0))
    return lambda: load_lora(built)


@case("lora-alpha-nan", "load_lora", r"alphanan\.safetensors: tensor 'diffusion_model\.\S+\.alpha' holds 1 NaN/inf")
def _(tmp_path, good):
    built = _save_lora(tmp_path, "alphanan.safetensors", lora_tensors(alpha=float("nan")))
    return lambda: load_lora(built)


@case("lora-nan-factor", "load_lora",
      r"nanb\.safetensors: tensor 'diffusion_model\.audio_model\.blocks\.1\.ffn\.0\.lora_B\.weight' holds 1 NaN/inf")
def _(tmp_path, good):
    tensors = poisoned(lora_tensors(), "diffusion_model.audio_model.blocks.1.ffn.0.lora_B.weight")
    built = _save_lora(tmp_path, "nanb.safetensors", tensors)
    return lambda: load_lora(built)


@case("lora-nan-in-memory", "apply_lora", r"^LoRA: 1 malformed LoRA modules: video_model\.blocks\.0\.self_attn\.q: "
                                         r"expected finite floating-point factors, but lora_B\.weight holds 1 NaN/inf")
def _(tmp_path, good):
    tensors = poisoned(lora_tensors(), "diffusion_model.video_model.blocks.0.self_attn.q.lora_B.weight")
    return lambda: apply_lora(micro_model(), tensors)


@case("lora-a-b-mismatch", "load_lora", r"ab\.safetensors: 1 malformed LoRA modules: video_model\.blocks\.0\.self_attn"
                                        r"\.q: lora_A \[2, 16\] and lora_B \[16, 3\] are not \[rank, in\] and "
                                        r"\[out, rank\]")
def _(tmp_path, good):
    tensors = lora_tensors()
    tensors["diffusion_model.video_model.blocks.0.self_attn.q.lora_B.weight"] = torch.zeros(16, 3)
    built = _save_lora(tmp_path, "ab.safetensors", tensors)
    return lambda: load_lora(built)


@case("lora-integer-tensors", "load_lora", r"int\.safetensors: 6 tensors are not floating point, e.g. .*\(I64\)")
def _(tmp_path, good):
    tensors = {k: v.round().long() for k, v in lora_tensors().items()}
    built = _save_lora(tmp_path, "int.safetensors", tensors)
    return lambda: load_lora(built)


@case("lora-module-the-model-lacks", "check_lora_fits",
      r"lora 'extra' does not fit this model \(1 of 3 modules differ.*video_model\.blocks\.7\.self_attn\.q: no such "
      r"linear layer")
def _(tmp_path, good):
    tensors = lora_tensors(modules={**LORA_MODULES, "video_model.blocks.7.self_attn.q": (16, 16)})
    return lambda: check_lora_fits(micro_model(), tensors, where="lora 'extra'")


@case("lora-for-another-size", "apply_lora",
      r"does not fit this model \(2 of 2 modules differ.*LoRA gives \[out, in\] = \[16, 16\], the model's weight "
      r"is \[24, 24\]")
def _(tmp_path, good):
    return lambda: apply_lora(micro_model(dim=24), lora_tensors())


@case("lora-factors-overflow", "apply_lora",
      r"^huge\.safetensors: merging it into \S+ at strength 1 gives \d+ NaN/inf weights \(\|B @ A\| up to inf")
def _(tmp_path, good):
    tensors = {k: v * 1e30 if "lora_" in k else v for k, v in lora_tensors().items()}   # finite, product is not
    return lambda: apply_lora(micro_model(), tensors, where="huge.safetensors")


@case("joint-model-as-lora", "load_lora", r"joint\.safetensors: 169 keys do not follow the LoRA key convention")
def _(tmp_path, good):
    return lambda: load_lora(good.joint)


@case("nan-lora-in-comfyui", "SyncAV Load LoRA (read_lora)", r"^lora: \S*nan\.safetensors: tensor "
                                                             r"'diffusion_model\.\S+' holds 1 NaN/inf values")
def _(tmp_path, good):
    pytest.importorskip("comfy_api.latest", reason="ComfyUI's node API not found (set COMFYUI_DIR)")
    from comfyui_syncav.nodes.comfy_bridge import read_lora

    tensors = poisoned(lora_tensors(), "diffusion_model.video_model.blocks.0.self_attn.q.lora_A.weight")
    path = _save_lora(tmp_path, "nan.safetensors", tensors)
    return lambda: read_lora(str(path), "lora")


# --- codecs

@case("nan-wan-vae", "WanVideoCodec.from_file", r"wan_nan\.safetensors: tensor 'decoder\.head\.2\.weight' holds 1 "
                                                r"NaN/inf values")
def _(tmp_path, good):
    save_tensors_atomic(poisoned(good.wan, "decoder.head.2.weight"), tmp_path / "wan_nan.safetensors",
                        {VAE_CONFIG_METADATA_KEY: json.dumps(TINY_WAN_WIDTHS)})
    return lambda: WanVideoCodec.from_file(tmp_path / "wan_nan.safetensors")


@case("mmaudio-vae-as-wan-vae", "WanVideoCodec.from_file", r"vae\.safetensors: not a Wan VAE: expected the Wan2\.2 "
                                                           r"VAE \(48 latent channels\)")
def _(tmp_path, good):
    return lambda: WanVideoCodec.from_file(good.vae_file)


@case("nan-mmaudio-vae", "MMAudioCodec.from_files", r"^audio VAE \S*vae_nan\.safetensors: tensor 'data_std' holds "
                                                    r"1 NaN/inf values")
def _(tmp_path, good):
    save_tensors_atomic(poisoned(good.mmaudio, "data_std", float("-inf")), tmp_path / "vae_nan.safetensors")
    return lambda: MMAudioCodec.from_files(tmp_path / "vae_nan.safetensors", good.vocoder_file)


@case("vocoder-as-vae", "MMAudioCodec.from_files", r"^audio VAE \S*vocoder\.safetensors: this is a BigVGAN "
                                                   r"vocoder, not the MMAudio VAE \(were the VAE and vocoder files "
                                                   r"swapped\?\)")
def _(tmp_path, good):
    return lambda: MMAudioCodec.from_files(good.vocoder_file, good.vae_file)


@case("wan-vae-as-vocoder", "load_bigvgan", r"wan\.safetensors: this is an autoencoder .*not a BigVGAN vocoder")
def _(tmp_path, good):
    return lambda: load_bigvgan(good.wan_file)


@case("nan-vocoder", "load_bigvgan", r"voc_nan\.safetensors: tensor 'conv_post\.weight' holds 1 NaN/inf values")
def _(tmp_path, good):
    save_tensors_atomic(poisoned(good.vocoder, "conv_post.weight"), tmp_path / "voc_nan.safetensors")
    return lambda: load_bigvgan(tmp_path / "voc_nan.safetensors")


@case("vocoder-zero-norm-direction", "load_bigvgan",
      r"zero_v\.safetensors: tensor 'conv_pre\.weight' holds \d+ NaN/inf values")
def _(tmp_path, good):
    state = unfold_weight_norm(good.vocoder, "legacy")
    state["conv_pre.weight_v"] = torch.zeros_like(state["conv_pre.weight_v"])   # g * v / |v| = 0 / 0
    save_tensors_atomic(state, tmp_path / "zero_v.safetensors")
    return lambda: load_bigvgan(tmp_path / "zero_v.safetensors")


@case("pickle-as-audio-vae", "load_mmaudio_vae", r"v1-16\.pth: not a safetensors file")
def _(tmp_path, good):
    torch.save({"hook": WritesMarker(tmp_path / MARKER)}, tmp_path / "v1-16.pth")
    return lambda: load_mmaudio_vae(tmp_path / "v1-16.pth")


# --- text encoders

@case("lora-as-text-encoder", "TinyTextEncoder.from_file",
      r"lora\.safetensors' is not a tiny text encoder saved by TinyTextEncoder\.save")
def _(tmp_path, good):
    return lambda: TinyTextEncoder.from_file(good.lora)


@case("nan-text-encoder", "TinyTextEncoder.from_file",
      r"text_nan\.safetensors: tensor 'token_embedding\.weight' holds 1 NaN/inf values")
def _(tmp_path, good):
    from safetensors import safe_open

    with safe_open(str(good.text_file), "pt") as handle:
        metadata, state = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    save_tensors_atomic(poisoned(state, "token_embedding.weight"), tmp_path / "text_nan.safetensors", metadata)
    return lambda: TinyTextEncoder.from_file(tmp_path / "text_nan.safetensors")


@case("text-encoder-config-corrupted", "TinyTextEncoder.from_file",
      r"text_cfg\.safetensors': metadata 'config' must give positive integers dim, .*found '\{\"dim\": 0")
def _(tmp_path, good):
    from safetensors import safe_open

    with safe_open(str(good.text_file), "pt") as handle:
        metadata, state = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    config = {**json.loads(metadata["config"]), "dim": 0}
    save_tensors_atomic(state, tmp_path / "text_cfg.safetensors", {**metadata, "config": json.dumps(config)})
    return lambda: TinyTextEncoder.from_file(tmp_path / "text_cfg.safetensors")


def _umt5(tmp_path, weights: dict[str, torch.Tensor] | None = None):
    """(a UMT5 loader for ``weights`` saved as one file, or for the given file) with a tiny UMT5's config and
    tokenizer beside it."""
    from test_text import write_tiny_umt5

    from comfyui_syncav.text.umt5 import UMT5TextEncoder

    folder = tmp_path / "umt5"
    model, _ = write_tiny_umt5(folder)
    state = weights if weights is not None else {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, lambda path: UMT5TextEncoder(path, config_path=folder, tokenizer_path=folder)


@case("nan-umt5-single-file", "UMT5TextEncoder", r"umt5_nan\.safetensors: tensor 'encoder\.block\.1\.layer\.1\."
                                                 r"DenseReluDense\.wo\.weight' holds 1 NaN/inf values")
def _(tmp_path, good):
    state, load = _umt5(tmp_path)
    save_tensors_atomic(poisoned(state, "encoder.block.1.layer.1.DenseReluDense.wo.weight"),
                        tmp_path / "umt5_nan.safetensors")
    return lambda: load(tmp_path / "umt5_nan.safetensors")


@case("joint-model-as-umt5", "UMT5TextEncoder", r"joint\.safetensors' is not a UMT5 encoder of this config: \d+ "
                                                r"missing keys")
def _(tmp_path, good):
    _, load = _umt5(tmp_path)
    return lambda: load(good.joint)


# --- convert (pickles read with torch.load(weights_only=True))

@case("convert-pickle-that-runs-code", "convert", r"evil\.pth: refused: the pickle holds objects other than tensors")
def _(tmp_path, good):
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": WritesMarker(tmp_path / MARKER)}, tmp_path / "evil.pth")
    return lambda: convert_checkpoint(tmp_path / "evil.pth", tmp_path / "out.safetensors")


@case("convert-plain-pickle-that-runs-code", "convert", r"raw\.pth: refused: the pickle holds objects other than "
                                                        r"tensors")
def _(tmp_path, good):
    (tmp_path / "raw.pth").write_bytes(pickle.dumps(WritesMarker(tmp_path / MARKER), protocol=2))
    return lambda: convert_checkpoint(tmp_path / "raw.pth", tmp_path / "out.safetensors")


@case("convert-4-key-wan-vae", "convert", r"thin\.pth: not a Wan VAE: expected the Wan2\.2 VAE")
def _(tmp_path, good):
    keys = ("encoder.conv1.weight", "decoder.conv1.weight", "conv1.weight", "conv2.weight")
    torch.save({k: good.wan[k] for k in keys}, tmp_path / "thin.pth")
    return lambda: convert_checkpoint(tmp_path / "thin.pth", tmp_path / "out.safetensors")


@case("convert-partial-wan-vae", "convert", r"partial\.pth: expected the Wan2\.2 VAE .*; 1 missing keys, e\.g\. "
                                            r"decoder\.conv_out\.bias")
def _(tmp_path, good):
    torch.save({k: v for k, v in good.wan.items() if k != "decoder.head.2.bias"}, tmp_path / "partial.pth")
    return lambda: convert_checkpoint(tmp_path / "partial.pth", tmp_path / "out.safetensors")


@case("convert-thin-mmaudio-vae", "convert", r"v1-16\.pth: checkpoint of another architecture: \d+ missing keys")
def _(tmp_path, good):
    keys = ("data_mean", "data_std", "encoder.conv_in.weight", "decoder.conv_in.weight", "decoder.conv_out.weight")
    torch.save({k: good.mmaudio[k] for k in keys}, tmp_path / "v1-16.pth")
    return lambda: convert_checkpoint(tmp_path / "v1-16.pth", tmp_path / "out.safetensors")


@case("convert-thin-bigvgan", "convert", r"best_netG\.pt: checkpoint of another architecture: \d+ missing keys")
def _(tmp_path, good):
    state = {k: v for k, v in good.vocoder.items() if k.startswith(("conv_pre.", "conv_post.", "ups."))}
    torch.save({"generator": state}, tmp_path / "best_netG.pt")
    return lambda: convert_checkpoint(tmp_path / "best_netG.pt", tmp_path / "out.safetensors")


@case("convert-nan-weights", "convert", r"nan\.pth: tensor 'encoder\.conv_in\.weight' holds 1 NaN/inf values")
def _(tmp_path, good):
    torch.save(poisoned(good.mmaudio, "encoder.conv_in.weight"), tmp_path / "nan.pth")
    return lambda: convert_checkpoint(tmp_path / "nan.pth", tmp_path / "out.safetensors")


@case("convert-integer-weights", "convert", r"int\.pth: tensor 'data_mean' is torch\.int64; network weights must be "
                                            r"floating point")
def _(tmp_path, good):
    torch.save({**good.mmaudio, "data_mean": good.mmaudio["data_mean"].long()}, tmp_path / "int.pth")
    return lambda: convert_checkpoint(tmp_path / "int.pth", tmp_path / "out.safetensors")


@pytest.mark.parametrize("case", params(CASES))
def test_bad_weight_file(case, good, tmp_path):
    call = _MAKERS[case.id](tmp_path, good)
    inputs = files_under(tmp_path)
    expect_error(case, call)
    assert files_under(tmp_path) == inputs, "a refused file must leave nothing behind"
    assert not (tmp_path / MARKER).exists(), "pickle code ran"


def test_an_overflowing_lora_leaves_the_model_as_it_was():
    # The first module merges fine, the second overflows: the first must be taken out again.
    tensors = lora_tensors()
    for key in tensors:
        if key.startswith("diffusion_model.audio_model.") and "lora_" in key:
            tensors[key] = tensors[key] * 1e30
    model = micro_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="merging it into audio_model.blocks.1.ffn.0"):
        apply_lora(model, tensors)
    # The merged module is restored the way MergedLora.restore does it (W + d - d: within one rounding).
    torch.testing.assert_close(model.state_dict(), before, rtol=2e-7, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items() if ".ffn." in k)   # never merged


# ------------------------------------------------------------------------------------------- the CLI

CLI_CASES = [
    BadInput("cli-generate-nan-lora", "cli generate --lora",
             r"^error: --lora: \S*nan_lora\.safetensors: tensor '\S+' holds 1 NaN/inf values"),
    BadInput("cli-generate-rank0-lora", "cli generate --lora",
             r"^error: --lora: \S*rank0\.safetensors: 2 malformed LoRA modules: .*rank 0"),
    BadInput("cli-convert-pickle-that-runs-code", "cli convert", r"^error: \S*evil\.pth: refused: .*weights_only"),
]


@pytest.mark.parametrize("case", params(CLI_CASES))
def test_bad_weight_file_on_the_command_line(case, tmp_path, capsys):
    if case.id == "cli-convert-pickle-that-runs-code":
        torch.save({"hook": WritesMarker(tmp_path / MARKER)}, tmp_path / "evil.pth")
        argv = ["convert", str(tmp_path / "evil.pth"), str(tmp_path / "out.safetensors")]
    else:
        name, tensors = (("nan_lora.safetensors", poisoned(lora_tensors(), next(iter(lora_tensors()))))
                         if case.id == "cli-generate-nan-lora" else ("rank0.safetensors", lora_tensors(rank=0)))
        save_tensors_atomic(tensors, tmp_path / name)
        argv = ["generate", "--prompt", "a ball", "--out", str(tmp_path / "clip.mp4"), "--steps", "2",
                "--lora", str(tmp_path / name)]
    inputs = files_under(tmp_path)
    expect_cli_error(case, argv, capsys)
    assert files_under(tmp_path) == inputs and not (tmp_path / MARKER).exists()


# ------------------------------------------------------------------------------------------- controls

def test_the_good_files_load(good, tmp_path):
    """The files the cases start from are valid, so each case fails for its own fault, not a broken fixture."""
    model = load_joint_model(good.joint)
    assert all(torch.equal(v, good.model.state_dict()[k]) for k, v in model.state_dict().items())
    tensors, _ = load_lora(good.lora)
    with apply_lora(model, tensors) as merged:
        assert merged.num_layers == 2
    assert WanVideoCodec.from_file(good.wan_file).vae.config.base_dim == 4
    codec = MMAudioCodec.from_files(good.vae_file, good.vocoder_file)
    assert count_non_finite(codec.decode(torch.zeros(1, 2, 20))) == 0
    assert TinyTextEncoder.from_file(good.text_file).dim == 16
    # An fp8 copy of the joint model loads too (the byte-mask path of the NaN check passes clean fp8 weights).
    fp8 = layer_weight_keys(good.model)
    save_tensors_atomic({k: v.to(torch.float8_e4m3fn) if k in fp8 else v for k, v in joint_state(good).items()},
                        tmp_path / "fp8.safetensors", joint_metadata(good))
    assert load_joint_model(tmp_path / "fp8.safetensors").compute_dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                   torch.float8_e4m3fn, torch.float8_e5m2])
def test_non_finite_values_are_counted_in_every_weight_dtype(dtype):
    values = torch.linspace(-3, 3, 1001).to(dtype)
    assert count_non_finite(values) == 0
    bad = values.clone()
    if dtype == torch.float8_e4m3fn:               # no inf in e4m3fn; its NaN is the byte S.1111.111
        bad.view(torch.uint8)[[0, 500, 1000]] = torch.tensor([0x7F, 0xFF, 0x7F], dtype=torch.uint8)
    else:
        bad[[0, 500, 1000]] = torch.tensor([float("nan"), float("inf"), float("-inf")]).to(dtype)
    assert count_non_finite(bad) == 3
    assert count_non_finite(bad[1:500]) == 0       # views and slices are checked as they are
