"""The Wan2.2 VAE codec (codecs/wan.py): key conversion against the reference manifests, loading the original
and diffusers layouts, latent normalisation, numeric identity with diffusers, tiled decoding, and the errors for
files that are not the Wan2.2 VAE.

The models here are the Wan2.2 VAE's exact layout at tiny widths (48 latent channels kept); the full-size model is
only ever built on the meta device.
"""

from __future__ import annotations

import ast
import json
import os
import tarfile
from pathlib import Path

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
from safetensors.torch import save_file

from comfyui_syncav.codecs.interface import VideoCodec
from comfyui_syncav.codecs.wan import (WAN22_LATENT_CHANNELS, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD,
                                            WAN22_VAE_CONFIG, WanVideoCodec, wan22_vae_key_to_diffusers,
                                            wan22_vae_key_to_original, wan22_vae_state_dict_to_original)
from comfyui_syncav.files.safetensors_io import CheckpointError

TINY_WIDTHS = dict(base_dim=4, decoder_base_dim=8)      # everything else as WAN22_VAE_CONFIG


def tiny_vae(seed: int = 0) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    return AutoencoderKLWan(**{**WAN22_VAE_CONFIG, **TINY_WIDTHS}).eval()


def save_state(state: dict[str, torch.Tensor], path) -> str:
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
    return str(path)


def raw_decode(vae: AutoencoderKLWan, latent: torch.Tensor) -> torch.Tensor:
    """What diffusers gives for a normalised latent [B, 48, Fv, Hv, Wv], as frames [B, F, H, W, 3] in 0..1."""
    mean = torch.tensor(WAN22_LATENTS_MEAN).view(1, -1, 1, 1, 1)
    std = torch.tensor(WAN22_LATENTS_STD).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        pixels = vae.decode(latent * std + mean).sample
    return ((pixels + 1) / 2).permute(0, 2, 3, 4, 1)


@pytest.fixture(scope="module")
def tiny_original_file(tmp_path_factory, one_thread):
    """(the tiny VAE, a safetensors file of its weights in the ORIGINAL Wan2.2 layout)."""
    vae = tiny_vae()
    path = tmp_path_factory.mktemp("wan") / "wan2.2_vae_tiny.safetensors"
    return vae, save_state(wan22_vae_state_dict_to_original(vae.state_dict()), path)


@pytest.fixture(scope="module")
def codec(tiny_original_file) -> WanVideoCodec:
    return WanVideoCodec.from_file(tiny_original_file[1], config=TINY_WIDTHS)


def clip(frames: int = 5, size_px: int = 32, seed: int = 1) -> torch.Tensor:
    """[1, frames, size, size, 3] in 0..1: a smooth colour gradient that drifts, plus noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames)[:, None, None, None]
    y = torch.arange(size_px)[None, :, None, None]
    x = torch.arange(size_px)[None, None, :, None]
    phase = torch.tensor([0.0, 2.0, 4.0])
    base = 0.5 + 0.35 * torch.sin((x + 2 * t) / 6 + phase) * torch.cos(y / 9 + phase)
    return (base + 0.05 * torch.randn(frames, size_px, size_px, 3, generator=g)).clamp(0, 1)[None].float()


# ------------------------------------------------------------------------------------------- key conversion

def test_key_rules_reproduce_the_reference_key_map(reference_dir):
    keymap = json.loads((reference_dir / "wan22_vae_to_diffusers_keymap.json").read_text())
    assert len(keymap) == 196
    wrong = {k: (wan22_vae_key_to_diffusers(k), v) for k, v in keymap.items() if wan22_vae_key_to_diffusers(k) != v}
    assert not wrong
    back = {v: (wan22_vae_key_to_original(v), k) for k, v in keymap.items() if wan22_vae_key_to_original(v) != k}
    assert not back


def test_full_size_model_has_exactly_the_original_files_tensors(reference_dir):
    manifest = json.loads((reference_dir / "wan22_vae_keys.json").read_text())["keys"]
    assert len(manifest) == 196
    with torch.device("meta"):
        vae = AutoencoderKLWan(**WAN22_VAE_CONFIG)
    expected = {k: list(v.shape) for k, v in vae.state_dict().items()}
    converted = {wan22_vae_key_to_diffusers(k): shape for k, (shape, _dtype) in manifest.items()}
    assert converted == expected
    assert sum(p.numel() for p in vae.parameters()) == 704_688_668
    assert vae.config.z_dim == WAN22_LATENT_CHANNELS == 48


def test_tiny_file_uses_the_original_key_names(reference_dir, tiny_original_file):
    from comfyui_syncav.files.safetensors_io import read_header
    manifest = json.loads((reference_dir / "wan22_vae_keys.json").read_text())["keys"]
    header, _ = read_header(tiny_original_file[1])
    assert set(header) == set(manifest)
    # Same structure, smaller widths: the latent-side shapes are the real ones.
    assert header["conv2.weight"]["shape"] == manifest["conv2.weight"][0] == [48, 48, 1, 1, 1]
    assert header["encoder.conv1.weight"]["shape"] == [4, 12, 3, 3, 3]


# ------------------------------------------------------------------------------------------- ComfyUI's latent space

def _latent_formats_source() -> str | None:
    """ComfyUI's comfy/latent_formats.py as text: from $COMFYUI_DIR, else the ComfyUI source kept beside the
    checkout (../shared/comfyui/ComfyUI-*.tar.gz, as CI has it); None where neither is. Read, never imported."""
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if comfy_dir and (Path(comfy_dir) / "comfy" / "latent_formats.py").is_file():
        return (Path(comfy_dir) / "comfy" / "latent_formats.py").read_text()
    for archive in sorted((Path(__file__).resolve().parents[2] / "shared" / "comfyui").glob("ComfyUI-*.tar.gz")):
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.name.endswith("comfy/latent_formats.py"):
                    return tar.extractfile(member).read().decode()
    return None


@pytest.fixture(scope="module")
def comfyui_wan22_normalisation() -> tuple[list[float], list[float]]:
    """(latents_mean, latents_std) of ComfyUI's Wan22 latent format: an independent copy of the published numbers."""
    source = _latent_formats_source()
    if source is None:
        if os.environ.get("SYNCAV_REQUIRE_REFERENCE"):       # CI: a missing fixture is a failure, not a skip
            pytest.fail("ComfyUI's source not found (set COMFYUI_DIR or keep ../shared/comfyui)")
        pytest.skip("ComfyUI's source not found (set COMFYUI_DIR)")
    wan22 = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == "Wan22")
    values = {}
    for node in ast.walk(wan22):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute) and \
                node.targets[0].attr in ("latents_mean", "latents_std"):
            values[node.targets[0].attr] = ast.literal_eval(next(n for n in ast.walk(node.value)
                                                                 if isinstance(n, ast.List)))
    return values["latents_mean"], values["latents_std"]


def test_latents_are_comfyuis_wan22_latent_space(codec, tiny_original_file, comfyui_wan22_normalisation):
    """The codec's normalised latents are what ComfyUI's Wan 2.2 latent format makes of the VAE's raw ones (its
    process_in: (raw - mean) / std, scale 1), and it decodes them the way ComfyUI does (raw = z std + mean)."""
    mean, std = comfyui_wan22_normalisation
    assert len(mean) == len(std) == WAN22_LATENT_CHANNELS
    assert list(WAN22_LATENTS_MEAN) == mean and list(WAN22_LATENTS_STD) == std
    vae, frames = tiny_original_file[0], clip(5, 32)
    with torch.no_grad():
        raw = vae.encode(frames.permute(0, 4, 1, 2, 3) * 2 - 1).latent_dist.mode()
    mean, std = torch.tensor(mean).view(1, -1, 1, 1, 1), torch.tensor(std).view(1, -1, 1, 1, 1)
    assert (codec.encode(frames) - (raw - mean) / std).abs().max() < 1e-5
    z = torch.randn(1, 48, 2, 2, 2)
    with torch.no_grad():
        expected = ((vae.decode(z * std + mean).sample + 1) / 2).permute(0, 2, 3, 4, 1)
    assert (codec.decode(z) - expected.clamp(0, 1)).abs().max() < 1e-6


# ------------------------------------------------------------------------------------------- codec behaviour

def test_codec_geometry(codec):
    assert isinstance(codec, VideoCodec)
    assert (codec.fps, codec.latent_channels, codec.temporal_stride, codec.spatial_stride) == (24.0, 48, 4, 16)
    assert codec.causal_first_frame
    assert codec.latent_frames(121) == 31 and codec.num_frames(31) == 121
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        codec.latent_frames(120)


def test_encode_decode_shapes(codec):
    latent = codec.encode(clip(5, 32))
    assert latent.shape == (1, 48, 2, 2, 2) and latent.dtype == torch.float32
    frames = codec.decode(latent)
    assert frames.shape == (1, 5, 32, 32, 3) and frames.dtype == torch.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    two = codec.encode(torch.cat([clip(9, 48, seed=2), clip(9, 48, seed=3)]))
    assert two.shape == (2, 48, 3, 3, 3)


def test_loaded_codec_is_diffusers_on_the_raw_model_with_normalisation(codec, tiny_original_file):
    vae = tiny_original_file[0]
    frames = clip(5, 32)
    with torch.no_grad():
        raw = vae.encode(frames.permute(0, 4, 1, 2, 3) * 2 - 1).latent_dist.mode()
    mean = torch.tensor(WAN22_LATENTS_MEAN).view(1, -1, 1, 1, 1)
    std = torch.tensor(WAN22_LATENTS_STD).view(1, -1, 1, 1, 1)
    latent = codec.encode(frames)
    assert (latent - (raw - mean) / std).abs().max() < 1e-5
    assert (latent - raw).abs().max() > 0.1              # the normalisation is not the identity

    z = torch.randn(1, 48, 2, 3, 2)
    decoded = codec.decode(z)
    assert (decoded - raw_decode(vae, z)).abs().max() < 1e-6
    with torch.no_grad():
        unnormalised = (vae.decode(z).sample + 1) / 2
    assert (decoded - unnormalised.permute(0, 2, 3, 4, 1)).abs().max() > 0.01


def test_diffusers_layout_file_loads_the_same(tmp_path, codec, tiny_original_file):
    vae = tiny_original_file[0]
    path = save_state(vae.state_dict(), tmp_path / "diffusion_pytorch_model.safetensors")
    same = WanVideoCodec.from_file(path, config=TINY_WIDTHS)
    z = torch.randn(1, 48, 2, 2, 2)
    assert torch.equal(same.decode(z), codec.decode(z))


def test_dtype_and_tiled_options(tiny_original_file):
    half = WanVideoCodec.from_file(tiny_original_file[1], dtype=torch.bfloat16, tiled=True, config=TINY_WIDTHS)
    assert {p.dtype for p in half.vae.parameters()} == {torch.bfloat16}
    assert half.tiled
    latent = half.encode(clip(5, 32))
    assert latent.dtype == torch.float32 and latent.shape == (1, 48, 2, 2, 2)
    full = WanVideoCodec.from_file(tiny_original_file[1], config=TINY_WIDTHS)
    assert (latent - full.encode(clip(5, 32))).abs().max() < 0.5    # bf16 weights: same function, coarser


def test_static_anchor_through_the_interface(codec):
    anchor = codec.static_latent(2, 32, 48)
    assert anchor.shape == (1, 48, 2, 2, 3) and torch.isfinite(anchor).all()
    grey = torch.full((1, 5, 32, 48, 3), 0.5)
    assert torch.equal(anchor, codec.encode(grey))
    assert codec.static_latent(2, 32, 48, dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("shape, message", [
    ((1, 5, 40, 32, 3), "multiples of 16"),
    ((1, 6, 32, 32, 3), "F = 1 \\+ 4k"),
    ((5, 32, 32, 3), "add a batch dimension"),
    ((1, 5, 32, 32, 4), "\\[B, F, H, W, 3\\]"),
])
def test_frames_the_codec_cannot_take(codec, shape, message):
    with pytest.raises(ValueError, match=message):
        codec.encode(torch.rand(shape))


def test_bad_latent(codec):
    with pytest.raises(ValueError, match="\\[B, 48, Fv, Hv, Wv\\]"):
        codec.decode(torch.randn(1, 16, 2, 2, 2))


# ------------------------------------------------------------------------------------------- tiled decoding

def local_decoder(vae: AutoencoderKLWan) -> AutoencoderKLWan:
    """The same model with a decoder whose output depends only on nearby latents (at most 18 px away): residual
    branches and attention outputs zeroed, the upsamplers' 3x3 convs cut to their centre tap. Tiling is exact on
    such a decoder when the dropped tile borders are wider than its reach."""
    with torch.no_grad():
        for name, p in vae.decoder.named_parameters():
            if (".resnets." in name and ".conv2." in name) or (".attentions." in name and ".proj." in name):
                p.zero_()
            if "resample.1.weight" in name:
                centre = p[..., 1, 1].clone()
                p.zero_()
                p[..., 1, 1] = centre
    return vae


class DecodeCounter:
    def __init__(self, vae):
        self.vae, self.inner, self.shapes = vae, vae.decode, []

    def __call__(self, z, *args, **kwargs):
        self.shapes.append(tuple(z.shape[-2:]))
        return self.inner(z, *args, **kwargs)


def test_tiled_decode_is_exact_on_a_local_decoder(tiny_original_file):
    vae = local_decoder(tiny_vae())
    tiled = WanVideoCodec(vae, tiled=True, tile_px=128, tile_overlap_px=96)
    untiled = WanVideoCodec(vae)
    z = torch.randn(1, 48, 2, 12, 10)
    reference = untiled.decode(z)
    counter = DecodeCounter(vae)
    vae.decode = counter
    try:
        result = tiled.decode(z)
    finally:
        del vae.decode
    assert counter.shapes == [(8, 8)] * 6          # 3 rows x 2 columns of 8 x 8 latent tiles (128 px)
    assert result.shape == reference.shape == (1, 5, 192, 160, 3)
    assert (result - reference).abs().max() < 1e-5
    assert reference.std() > 0.05                  # the decoded frames are not flat, so the equality says something


def test_tiled_decode_of_a_latent_within_one_tile_is_the_plain_decode(codec):
    tiled = WanVideoCodec(codec.vae, tiled=True, tile_px=64, tile_overlap_px=32)
    z = torch.randn(1, 48, 2, 4, 3)
    assert torch.equal(tiled.decode(z), codec.decode(z))


def test_tiled_decode_of_a_general_decoder_stays_close(codec):
    tiled = WanVideoCodec(codec.vae, tiled=True, tile_px=96, tile_overlap_px=48)
    z = torch.randn(1, 48, 2, 9, 9)
    plain, by_tiles = codec.decode(z), tiled.decode(z)
    assert by_tiles.shape == plain.shape == (1, 5, 144, 144, 3)
    # Measured: 0.27 of the frames' mean deviation; tiles put in the wrong place would be near 1.
    assert (by_tiles - plain).abs().mean() < 0.4 * (plain - plain.mean()).abs().mean()


def test_tile_options_are_checked(codec):
    with pytest.raises(ValueError, match="tile_px"):
        WanVideoCodec(codec.vae, tiled=True, tile_px=100)
    with pytest.raises(ValueError, match="tile_overlap_px"):
        WanVideoCodec(codec.vae, tiled=True, tile_px=64, tile_overlap_px=64)


# ------------------------------------------------------------------------------------------- wrong files

def test_wan21_vae_in_original_layout_is_named(tmp_path):
    # The Wan 2.1 VAE's original names: flat decoder stages, 16 latent channels.
    state = {"conv1.weight": torch.zeros(32, 32, 1, 1, 1), "conv2.weight": torch.zeros(16, 16, 1, 1, 1),
             "decoder.conv1.weight": torch.zeros(8, 16, 3, 3, 3),
             "decoder.middle.0.residual.0.gamma": torch.ones(8, 1, 1, 1),
             "decoder.upsamples.0.residual.2.weight": torch.zeros(8, 8, 3, 3, 3)}
    path = save_state(state, tmp_path / "wan_2.1_vae.safetensors")
    expected = ("wan_2.1_vae.safetensors: this is a Wan 2.1 VAE \\(16 latent channels\\); "
                "Ovi needs the Wan 2.2 VAE \\(48 channels\\)")
    with pytest.raises(CheckpointError, match=expected):
        WanVideoCodec.from_file(path)


def test_wan21_vae_in_diffusers_layout_is_named(tmp_path):
    torch.manual_seed(0)
    wan21 = AutoencoderKLWan(base_dim=4, z_dim=16)
    path = save_state(wan21.state_dict(), tmp_path / "vae21.safetensors")
    with pytest.raises(CheckpointError, match="this is a Wan 2.1 VAE \\(16 latent channels\\)"):
        WanVideoCodec.from_file(path)


def test_truncated_file(tmp_path, tiny_original_file):
    data = open(tiny_original_file[1], "rb").read()
    path = tmp_path / "wan2.2_vae.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="wan2.2_vae.safetensors: truncated"):
        WanVideoCodec.from_file(path, config=TINY_WIDTHS)


def test_pickle_file(tmp_path):
    path = tmp_path / "Wan2.2_VAE.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(200))        # a zip-format torch pickle starts like this
    with pytest.raises(CheckpointError, match="Wan2.2_VAE.pth: not a safetensors file"):
        WanVideoCodec.from_file(path)


def test_unrelated_file(tmp_path):
    path = save_state({"model.diffusion_model.x.weight": torch.zeros(2, 2)}, tmp_path / "unet.safetensors")
    with pytest.raises(CheckpointError, match="unet.safetensors: not a Wan VAE: expected the Wan2.2 VAE"):
        WanVideoCodec.from_file(path)


def test_wan22_layout_of_other_widths_fails_strictly(tiny_original_file):
    # The tiny file read as the full-size Wan2.2 VAE: right names, wrong shapes; nothing is loaded.
    expected = ("tensors of another shape, e.g. encoder.conv_in.weight \\[4, 12, 3, 3, 3\\] "
                "\\(expected \\[160, 12, 3, 3, 3\\]\\)")
    with pytest.raises(CheckpointError, match=expected):
        WanVideoCodec.from_file(tiny_original_file[1])


def test_missing_tensor_fails_strictly(tmp_path, tiny_original_file):
    state = wan22_vae_state_dict_to_original(tiny_original_file[0].state_dict())
    del state["decoder.head.2.bias"]
    path = save_state(state, tmp_path / "partial.safetensors")
    with pytest.raises(CheckpointError, match="partial.safetensors: .*1 missing keys, e.g. decoder.conv_out.bias"):
        WanVideoCodec.from_file(path, config=TINY_WIDTHS)
