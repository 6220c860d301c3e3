"""Ovi end to end with the real classes at tiny sizes, no stand-ins: a ComfyUI-style models folder holding a joint
model in Ovi's key layout, the Wan2.2 VAE in its original key names, MMAudio's 16 kHz VAE and BigVGAN converted from
their published .pth layouts by the ``convert`` command, and a UMT5 encoder with its config and tokenizer; then
text -> latents -> frames + audio through the CLI (an mp4) and through the Loader preset's node chain, and the
errors a user gets for the wrong files through those same entry points.

Tiny sizes: the joint model is 32 wide with 2 blocks (Ovi's 48 / 20 latent channels, 512 text rows, RoPE scale),
its text width the tiny UMT5's 32; the Wan VAE carries its smaller widths in its metadata; the variant's trained
pixel area is patched down to 32 x 32 px (Ovi rescales every request to it, and 704 x 704 px is no CPU test size).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan

from comfyui_syncav.cli import main
from comfyui_syncav.ovi import variants as ovi_variants
from comfyui_syncav.codecs.bigvgan import BigVGANConfig, BigVGANGenerator, unfold_weight_norm
from comfyui_syncav.model.checkpoint import save_joint_model
from comfyui_syncav.codecs.mmaudio import MMAudioCodec
from comfyui_syncav.codecs.wan import VAE_CONFIG_METADATA_KEY, WAN22_VAE_CONFIG, WanVideoCodec, \
    wan22_vae_state_dict_to_original
from comfyui_syncav.model.config import OVI_ROPE_SCALE, JointConfig, get_preset
from comfyui_syncav.model.joint import JointModel
from comfyui_syncav.files.media_io import probe_mp4
from comfyui_syncav.codecs.mmaudio_vae import MMAudioVAE, MMAudioVAEConfig
from comfyui_syncav.ovi.pipeline import OviPipeline, OviTextEncoder, build_ovi_pipeline
from comfyui_syncav.ovi.variants import AUDIO_VAE, TEXT_ENCODER, VIDEO_VAE, VOCODER, find_text_encoder_files, \
    find_variant_files, get_variant
from comfyui_syncav.files.model_folders import folder_tree_finder
from comfyui_syncav.files.safetensors_io import CheckpointError, read_header, save_tensors_atomic
from comfyui_syncav.text.umt5 import UMT5TextEncoder

from test_text import write_tiny_umt5

UMT5_WIDTH = 32
TINY_WAN_WIDTHS = {"base_dim": 4, "decoder_base_dim": 8}
TINY_MMAUDIO_VAE = MMAudioVAEConfig(hidden_dim=8)
TINY_BIGVGAN = BigVGANConfig(upsample_initial_channel=64)
SIZE_PX = 32
SECONDS = 0.5            # 13 frames at 24 fps: 4 video latent frames, 16 audio latents (12 / 24 s x 157 / 5 s)
FRAMES, VIDEO_LATENT_FRAMES, AUDIO_LATENTS = 13, 4, 16
PROMPT, SPEECH, SOUND = "A man waves at the camera.", "Hello there!", "A cheerful voice."
OVI_PROMPT = "A man waves at the camera. <S>Hello there!<E> <AUDCAP>A cheerful voice.<ENDAUDCAP>"   # 720 style


def node(name):
    from comfy_nodes import node as comfy_node    # needs ComfyUI's node API: only the node tests import it

    return comfy_node(name)


def tiny_ovi_config(text_dim: int = UMT5_WIDTH) -> JointConfig:
    """The ovi-720-5s preset at width 32 and 2 blocks, reading ``text_dim``-wide text."""
    preset = get_preset("ovi-720-5s")
    small = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=32, text_dim=text_dim)
    return preset.replace(name="ovi-tiny", video=dataclasses.replace(preset.video, **small),
                          audio=dataclasses.replace(preset.audio, **small))


# ------------------------------------------------------------------------------------------------ files

def write_wan_vae(path, latent_channels: int = 48, seed: int = 1) -> None:
    """A tiny Wan VAE. 48 channels: the Wan2.2 VAE in its original key names, its widths in the metadata.
    16 channels: a Wan 2.1 VAE (diffusers' layout, as diffusers' Wan2.1 repositories ship it)."""
    torch.manual_seed(seed)
    if latent_channels == 48:
        vae = AutoencoderKLWan(**{**WAN22_VAE_CONFIG, **TINY_WAN_WIDTHS})
        save_tensors_atomic(wan22_vae_state_dict_to_original(vae.state_dict()), path,
                            {VAE_CONFIG_METADATA_KEY: json.dumps(TINY_WAN_WIDTHS)})
    else:
        save_tensors_atomic(AutoencoderKLWan(base_dim=4, z_dim=latent_channels).state_dict(), path)


def mmaudio_vae_state(config: MMAudioVAEConfig = TINY_MMAUDIO_VAE, seed: int = 2) -> dict[str, torch.Tensor]:
    """A VAE state dict as MMAudio's checkpoint stores it: raw conv weights, per-band log-mel statistics."""
    torch.manual_seed(seed)
    state = MMAudioVAE(config).state_dict()
    state["data_mean"] = torch.full_like(state["data_mean"], -4.0)
    state["data_std"] = torch.full_like(state["data_std"], 2.0)
    return state


def write_published_audio_files(folder, vae_state: dict[str, torch.Tensor] | None = None):
    """(v1-16.pth, best_netG.pt) in MMAudio's published layouts: the VAE's flat raw state dict, and BigVGAN's
    generator under a "generator" key with weight norm unfolded (old PyTorch names) beside a training counter."""
    folder.mkdir(parents=True, exist_ok=True)
    vae_pth, vocoder_pth = folder / "v1-16.pth", folder / "best_netG.pt"
    torch.save(vae_state if vae_state is not None else mmaudio_vae_state(), vae_pth)
    torch.manual_seed(3)
    generator = BigVGANGenerator(TINY_BIGVGAN).state_dict()
    torch.save({"generator": unfold_weight_norm(generator, "legacy"), "steps": 1000}, vocoder_pth)
    return vae_pth, vocoder_pth


def write_umt5(models_dir, width: int = UMT5_WIDTH) -> None:
    """UMT5 as ComfyUI keeps it (one weights file in models/text_encoders, fp16) with google/umt5-xxl's kind of
    config.json and tokenizer in models/text_encoders/umt5-xxl/."""
    folder = models_dir / "text_encoders"
    model, _ = write_tiny_umt5(folder / "umt5-xxl", d_model=width)
    state = {k: v.half() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_tensors_atomic(state, folder / TEXT_ENCODER.name)


def write_models_dir(root) -> None:
    """Every file Ovi 720x720 5s needs, at tiny sizes, where ComfyUI keeps them."""
    torch.manual_seed(0)
    joint = root / "diffusion_models" / "Ovi" / "model.safetensors"
    joint.parent.mkdir(parents=True)
    save_joint_model(JointModel(tiny_ovi_config()), joint)
    (root / "vae").mkdir()
    write_wan_vae(root / "vae" / VIDEO_VAE.name)
    vae_pth, vocoder_pth = write_published_audio_files(root.parent / "downloads")
    assert main(["convert", str(vae_pth), str(root / "vae" / AUDIO_VAE.name)]) == 0
    assert main(["convert", str(vocoder_pth), str(root / "vae" / VOCODER.name)]) == 0
    write_umt5(root)


@pytest.fixture(scope="module")
def pristine_models_dir(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("ovi") / "models"
    root.mkdir()
    write_models_dir(root)
    return root


@pytest.fixture
def models_dir(pristine_models_dir, tmp_path, monkeypatch, one_thread):
    """A copy of the tiny models folder (tests may break its files), which the Loader's folder lookup searches
    (outside ComfyUI: $SYNCAV_MODELS_DIR), with the 720x720 variant's trained area patched down to 32 x 32 px."""
    root = tmp_path / "models"
    shutil.copytree(pristine_models_dir, root)
    monkeypatch.setenv("SYNCAV_MODELS_DIR", str(root))
    variant = get_variant("720x720_5s")
    tiny = dataclasses.replace(variant, height_px=SIZE_PX, width_px=SIZE_PX)
    monkeypatch.setitem(ovi_variants.VARIANTS, variant.key, tiny)
    monkeypatch.setitem(ovi_variants.VARIANTS_BY_LABEL, variant.label, tiny)
    return root


# ------------------------------------------------------------------------------------------------ end to end

def test_files_are_in_their_published_layouts(pristine_models_dir):
    vae = pristine_models_dir / "vae"
    wan, _ = read_header(vae / VIDEO_VAE.name)
    assert "decoder.middle.0.residual.0.gamma" in wan and wan["conv2.weight"]["shape"] == [48, 48, 1, 1, 1]
    vocoder, metadata = read_header(vae / VOCODER.name)
    assert metadata["syncav_format"] == "bigvgan" and metadata["syncav_converted_from"] == "best_netG.pt"
    assert "conv_pre.weight" in vocoder and not any("weight_g" in k for k in vocoder)      # weight norm folded
    audio_vae, _ = read_header(vae / AUDIO_VAE.name)
    assert audio_vae["encoder.conv_in.weight"]["shape"] == [8, 80, 3]                       # 80 mel bands in
    joint, _ = read_header(pristine_models_dir / "diffusion_models" / "Ovi" / "model.safetensors")
    assert joint["video_model.patch_embedding.weight"]["shape"] == [32, 48, 1, 2, 2]
    assert joint["audio_model.patch_embedding.0.weight"]["shape"][1] == 20
    assert joint["video_model.text_embedding.0.weight"]["shape"] == [32, UMT5_WIDTH]


def test_wan_vae_metadata_sets_widths_only(tmp_path):
    torch.manual_seed(1)
    state = wan22_vae_state_dict_to_original(AutoencoderKLWan(**{**WAN22_VAE_CONFIG, **TINY_WAN_WIDTHS}).state_dict())
    for bad in ('{"z_dim": 16}', '{"base_dim": 0}', "[4, 8]"):
        path = tmp_path / "vae.safetensors"
        save_tensors_atomic(state, path, {VAE_CONFIG_METADATA_KEY: bad})
        with pytest.raises(CheckpointError, match=r"vae\.safetensors: metadata 'syncav_vae_config' must be a JSON "
                                                  r"object of positive integers for some of base_dim, "
                                                  r"decoder_base_dim"):
            WanVideoCodec.from_file(path)
    save_tensors_atomic(state, path, {VAE_CONFIG_METADATA_KEY: json.dumps(TINY_WAN_WIDTHS)})
    assert WanVideoCodec.from_file(path).vae.config.base_dim == 4


def test_cli_generate_writes_an_mp4_from_text(models_dir, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--model", "720x720_5s", "--models-dir", str(models_dir), "--prompt", PROMPT,
                 "--speech", SPEECH, "--sound", SOUND, "--seconds", str(SECONDS), "--steps", "2",
                 "--solver", "euler", "--out", str(out)]) == 0
    assert f"{FRAMES} frames {SIZE_PX}x{SIZE_PX} at 24 fps + 16000 Hz audio" in capsys.readouterr().out
    info = probe_mp4(out)
    video, audio = info["video"], info["audio"]
    assert (video["frames"], video["fps"], video["width"], video["height"]) == (FRAMES, 24.0, SIZE_PX, SIZE_PX)
    assert video["seconds"] == pytest.approx(FRAMES / 24, abs=1e-3)
    assert (audio["sample_rate"], audio["channels"]) == (16000, 1)
    # The decoder gives 512 samples per latent: 16 latents = 0.512 s (Ovi's audio covers the motion after the first
    # frame, 12 / 24 s, at 157 latents per 5 s), a frame's length short of the video.
    assert audio["seconds"] == pytest.approx(AUDIO_LATENTS * 512 / 16000, abs=1024 / 16000)   # within an AAC frame


def test_loader_preset_chain_from_text_to_frames_and_audio(models_dir):
    with torch.inference_mode():
        model, codecs, text_encoder = node("SyncAVLoader").load("Ovi 720x720 5s", "auto")
    pipeline = codecs.pipeline
    assert isinstance(pipeline, OviPipeline) and pipeline.variant.key == "720x720_5s"
    assert isinstance(codecs.video_codec, WanVideoCodec) and isinstance(codecs.audio_codec, MMAudioCodec)
    assert isinstance(text_encoder, OviTextEncoder) and not text_encoder.loaded
    assert (text_encoder.dim, text_encoder.max_length) == (UMT5_WIDTH, 512)      # the joint model's text width

    with torch.inference_mode():
        (cond,) = node("SyncAVTextEncode").encode(text_encoder, PROMPT, "", "", "", speech=SPEECH, sound=SOUND)
    assert text_encoder.loaded and cond.prompts["video_prompt"] == cond.prompts["audio_prompt"] == OVI_PROMPT
    # What the node encoded is the UMT5 file's encoding of Ovi's joined prompt, and Ovi's negatives.
    text_dir = models_dir / "text_encoders"
    umt5 = UMT5TextEncoder(text_dir / TEXT_ENCODER.name, config_path=text_dir / "umt5-xxl",
                           tokenizer_path=text_dir / "umt5-xxl", dtype=torch.bfloat16)
    expected, negative = umt5.encode([OVI_PROMPT]), umt5.encode(["jitter, bad hands, blur, distortion"])
    video_text, audio_text = cond.positive
    assert video_text.embeddings.shape == (1, 512, UMT5_WIDTH)
    assert torch.equal(video_text.embeddings, expected.embeddings)
    assert torch.equal(audio_text.embeddings, expected.embeddings)
    assert video_text.lengths.tolist() == expected.lengths.tolist() and expected.lengths[0] > 10
    assert torch.equal(cond.negative[0].embeddings, negative.embeddings)

    with torch.inference_mode():
        latent, _ = node("SyncAVEmptyLatent").generate(codecs, SECONDS, SIZE_PX, SIZE_PX, 1)
        assert latent["video"].shape == (1, 48, VIDEO_LATENT_FRAMES, 2, 2)
        assert latent["audio"].shape == (1, AUDIO_LATENTS, 20)
        (sampled,) = node("SyncAVSampler").sample(model, cond, latent, codecs, 0, 2, solver="euler", shift=5.0,
                                                  text_scale_video=4.0, text_scale_audio=3.0, sync_scale_video=2.0,
                                                  sync_scale_audio=2.0, sync_start=0.0, sync_end=1.0)
        images, audio, fps = node("SyncAVDecode").decode(codecs, sampled)
    assert torch.isfinite(sampled["video"]).all() and sampled["video"].std() > 0.1
    assert images.shape == (FRAMES, SIZE_PX, SIZE_PX, 3) and fps == 24.0
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.01                 # not a blank clip
    waveform = audio["waveform"]
    assert audio["sample_rate"] == 16000 and waveform.shape == (1, 1, round(FRAMES / 24 * 16000))
    assert waveform[..., :AUDIO_LATENTS * 512].abs().max() > 1e-4                          # the vocoder's output
    assert waveform[..., AUDIO_LATENTS * 512:].abs().max() == 0                            # padded to the frames


def test_library_build_matches_the_codecs_own_latent_lengths(models_dir):
    finder = folder_tree_finder(models_dir)
    variant = get_variant("720x720_5s")
    pipeline = build_ovi_pipeline(variant, find_variant_files(variant, finder),
                                  text_encoder_files=find_text_encoder_files(finder))
    assert pipeline.text_encoder.encode(["a red ball"]).embeddings.shape == (1, 512, UMT5_WIDTH)
    assert pipeline.model.config.audio.rope_scale == pytest.approx(OVI_ROPE_SCALE, abs=1e-12)
    video_shape, audio_shape = pipeline.latent_shapes(SECONDS, SIZE_PX, SIZE_PX)
    # The real codecs encode a clip of those frames to the latent the pipeline samples.
    frames = torch.rand(1, FRAMES, SIZE_PX, SIZE_PX, 3)
    assert pipeline.video_codec.encode(frames).shape == video_shape
    waveform = 0.1 * torch.randn(1, 1, round(FRAMES / 24 * 16000))
    assert pipeline.audio_codec.encode(waveform).shape == audio_shape
    # Where the two rules part: 10 s (241 frames = 10.04 s = 160667 samples) Ovi samples 314 audio latents, the
    # codec encodes 313 (whole 512-sample blocks). The pipeline's shapes follow Ovi.
    assert pipeline.latent_shapes(10.0, SIZE_PX, SIZE_PX)[1] == (1, 314, 20)
    assert pipeline.audio_codec.latent_length(round(241 / 24 * 16000)) == 313
    assert pipeline.audio_codec.latent_length(round(121 / 24 * 16000)) == 157    # at 5 s they agree


# ------------------------------------------------------------------------------------------------ wrong files

def _replace_wan_with_2_1(root):
    write_wan_vae(root / "vae" / VIDEO_VAE.name, latent_channels=16)


def _replace_audio_vae_with_44k(root):
    state = mmaudio_vae_state(MMAudioVAEConfig(data_dim=128, embed_dim=40, hidden_dim=8))
    save_tensors_atomic(state, root / "vae" / AUDIO_VAE.name)


def _truncate(relative_path):
    def cut(root):
        path = root / relative_path
        data = path.read_bytes()
        path.write_bytes(data[:len(data) - 100])
    return cut


@pytest.mark.parametrize("break_files, expected", [
    (_replace_wan_with_2_1, r"vae[/\\]wan2\.2_vae\.safetensors: this is a Wan 2\.1 VAE \(16 latent channels\); Ovi "
                            r"needs the Wan 2\.2 VAE \(48 channels\)"),
    (_replace_audio_vae_with_44k, r"audio VAE .*vae[/\\]mmaudio_vae_16k_fp32\.safetensors: this is the 44\.1 kHz "
                                  r"MMAudio VAE; Ovi needs the 16 kHz one"),
    (_truncate("diffusion_models/Ovi/model.safetensors"),
     r"Ovi[/\\]model\.safetensors: truncated: the header describes \d+ bytes, the file has \d+"),
    (_truncate(f"vae/{VOCODER.name}"),
     r"audio vocoder .*mmaudio_vocoder_bigvgan_best_netG_fp32\.safetensors: truncated"),
], ids=["wan2.1-vae", "mmaudio-44k-vae", "truncated-joint-model", "truncated-vocoder"])
def test_loader_preset_names_the_wrong_file(models_dir, break_files, expected):
    break_files(models_dir)
    with pytest.raises(CheckpointError, match=expected):
        node("SyncAVLoader").load("Ovi 720x720 5s", "auto")


def test_text_encoder_of_another_width_is_refused_at_first_encode(models_dir, tmp_path, capsys):
    shutil.rmtree(models_dir / "text_encoders")
    write_umt5(models_dir, width=48)

    # Loader preset: the model and codecs load; at the first encode the UMT5 config is checked against the joint
    # model's width before its weights are read.
    _, _, text_encoder = node("SyncAVLoader").load("Ovi 720x720 5s", "auto")
    with pytest.raises(ValueError) as refused:
        node("SyncAVTextEncode").encode(text_encoder, PROMPT, "", "", "")
    message = str(refused.value).replace("\\", "/")
    assert "Ovi text encoder for the joint model model.safetensors (32-wide text)" in message
    assert "umt5-xxl/config.json' has hidden size d_model=48, expected 32" in message
    assert not text_encoder.loaded

    # CLI: the config is refused before the weights are read, and nothing is written.
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--model", "720x720_5s", "--models-dir", str(models_dir), "--prompt", PROMPT,
                 "--seconds", str(SECONDS), "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Ovi text encoder for the joint model model.safetensors (32-wide text)" in err
    assert "umt5-xxl/config.json' has hidden size d_model=48, expected 32" in err.replace("\\\\", "/")
    assert not out.exists()


def test_an_encoder_given_to_the_builder_must_have_the_models_width(models_dir):
    class Wide(UMT5TextEncoder):
        def __init__(self):          # nothing to load: only the width matters here
            self.dim, self.max_length = 4096, 512

    finder = folder_tree_finder(models_dir)
    variant = get_variant("720x720_5s")
    with pytest.raises(ValueError, match=r"text_encoder: Wide gives 4096-wide embeddings; the joint model "
                                         r"model\.safetensors takes 32-wide text"):
        build_ovi_pipeline(variant, find_variant_files(variant, finder), text_encoder=Wide())
