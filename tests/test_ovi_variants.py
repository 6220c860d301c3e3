"""Ovi's variants, clip sizes and prompt format: the exact numbers and strings Ovi uses."""

import json

import pytest

from comfyui_syncav.model.config import OVI_ROPE_SCALE, get_preset
from comfyui_syncav.model.ovi_prompt import OVI_AUDIO_NEGATIVE, OVI_VIDEO_NEGATIVE, build_ovi_prompt, convert_style, \
    sound_caption, speech_lines
from comfyui_syncav.model.ovi_sizes import audio_latent_length, frames_for_seconds, latent_lengths, \
    rope_scale_from_codecs, size_for_aspect, snap_size_to_area, video_latent_frames
from comfyui_syncav.model.ovi_variants import PRESET_LABELS, VARIANTS, find_text_encoder_files, find_variant_files, \
    folder_tree_finder, get_variant, recognise_variant, uses_ovi_codecs, variant_from_name

from ovi_stand_ins import StandInMMAudioCodec, StandInWanCodec, write_ovi_files


# ------------------------------------------------------------------------------------------------ sizes

@pytest.mark.parametrize("seconds, frames, video_latents, audio_latents", [
    (5.0, 121, 31, 157),     # Ovi's 5 s models
    (10.0, 241, 61, 314),    # Ovi's 10 s model
    (2.0, 49, 13, 63),       # the same rule elsewhere: 2 s of motion x 157 / 5 s = 62.8
])
def test_latent_lengths_match_ovi(seconds, frames, video_latents, audio_latents):
    assert latent_lengths(seconds) == (frames, video_latents, audio_latents)
    assert frames_for_seconds(seconds) == frames
    assert video_latent_frames(frames) == video_latents
    assert audio_latent_length(video_latents) == audio_latents


def test_frame_counts_round_to_what_the_causal_vae_takes():
    assert frames_for_seconds(5.05) == 121 and frames_for_seconds(4.9) == 117   # 117.6 frames -> 29 x 4 + 1
    assert frames_for_seconds(0.01) == 5                                        # at least one latent step
    with pytest.raises(ValueError, match="1 \\+ 4k frames, got 120"):
        video_latent_frames(120)
    with pytest.raises(ValueError, match="seconds"):
        frames_for_seconds(0)


@pytest.mark.parametrize("height, width, area, expected", [
    (720, 720, 720 * 720, (704, 704)),       # 22.5 x 32 rounds to 22 x 32, as in Ovi
    (704, 1280, 960 * 960, (704, 1280)),     # Ovi's recommended 960-area sizes stay as they are
    (1280, 704, 960 * 960, (1280, 704)),
    (960, 960, 960 * 960, (960, 960)),
    (512, 992, 720 * 720, (512, 992)),
    (1080, 1920, 720 * 720, (544, 960)),     # 16:9 at 720x720 area
])
def test_sizes_snap_to_the_variant_area_in_multiples_of_32(height, width, area, expected):
    assert snap_size_to_area(height, width, area) == expected


def test_size_for_aspect():
    assert size_for_aspect("9:16", 960 * 960) == (704, 1280)
    assert size_for_aspect("16:9", 960 * 960) == (1280, 704)
    assert size_for_aspect("1:1", 720 * 720) == (704, 704)
    with pytest.raises(ValueError, match="aspect"):
        size_for_aspect("wide", 720 * 720)


def test_rope_scale_from_the_codec_rates_is_ovis():
    scale = rope_scale_from_codecs(StandInWanCodec(), StandInMMAudioCodec(), frames=121)
    assert scale == pytest.approx(0.19676, abs=1e-5)     # Ovi's temporal_rope_scaling_factor
    assert scale == pytest.approx(OVI_ROPE_SCALE, abs=1e-12)
    for preset in ("ovi-720-5s", "ovi-960-5s", "ovi-960-10s"):   # the 10 s model keeps the 5 s scale
        assert get_preset(preset).audio.rope_scale == pytest.approx(scale, abs=1e-12)


# ------------------------------------------------------------------------------------------------ prompts

SCENE = "A man in a red jacket waves at the camera."
SOUND = "A warm male voice, birds in the background."


def test_ovi_prompt_720_style():
    assert build_ovi_prompt(SCENE, ["Hello there!", "How are you?"], SOUND, "audcap") == (
        "A man in a red jacket waves at the camera. <S>Hello there!<E> <S>How are you?<E> "
        "<AUDCAP>A warm male voice, birds in the background.<ENDAUDCAP>")


def test_ovi_prompt_960_style():
    assert build_ovi_prompt(SCENE, "Hello there!", SOUND, "audio_prefix") == (
        "A man in a red jacket waves at the camera. <S>Hello there!<E> "
        "Audio: A warm male voice, birds in the background.")


def test_speech_as_one_string_gives_one_tag_pair_per_line():
    assert speech_lines("Hello there!\n\n   How are you?  \n") == ["Hello there!", "How are you?"]
    assert speech_lines(["<S>Hi<E>", " "]) == ["Hi"]          # typed tags are not doubled
    assert build_ovi_prompt(SCENE, "Hello there!\nHow are you?", "", "audcap") == (
        "A man in a red jacket waves at the camera. <S>Hello there!<E> <S>How are you?<E>")
    assert build_ovi_prompt(SCENE) == SCENE
    with pytest.raises(ValueError, match="speech"):
        speech_lines(3)


def test_sound_caption_and_style_conversion():
    assert sound_caption("Audio: rain on a roof", "audcap") == "<AUDCAP>rain on a roof<ENDAUDCAP>"
    assert sound_caption("  ", "audio_prefix") == ""
    ovi_720 = "A singer shouts, <S>We fight back.<E>. The lights flare. <AUDCAP>Electric guitar, crowd.<ENDAUDCAP>"
    ovi_960 = "A singer shouts, <S>We fight back.<E>. The lights flare. Audio: Electric guitar, crowd."
    assert convert_style(ovi_720, "audio_prefix") == ovi_960
    assert convert_style(ovi_960, "audcap") == ovi_720
    assert build_ovi_prompt(ovi_720, style="audio_prefix") == ovi_960   # a pasted prompt is converted
    with pytest.raises(ValueError, match="prompt style"):
        build_ovi_prompt(SCENE, style="ovi")


def test_ovi_default_negatives():
    assert OVI_VIDEO_NEGATIVE == "jitter, bad hands, blur, distortion"
    assert OVI_AUDIO_NEGATIVE == "robotic, muffled, echo, distorted"


# ------------------------------------------------------------------------------------------------ variants

def test_variant_table():
    assert PRESET_LABELS == ("Ovi 720x720 5s", "Ovi 960x960 5s", "Ovi 960x960 10s", "Ovi 720x720 5s fp8")
    rows = {v.key: (v.fps, v.seconds, v.frames, v.video_latent_frames, v.audio_latents, v.area_px, v.prompt_style,
                    v.fp8, v.model_file.name) for v in VARIANTS.values()}
    assert rows == {
        "720x720_5s": (24.0, 5.0, 121, 31, 157, 518400, "audcap", False, "model.safetensors"),
        "960x960_5s": (24.0, 5.0, 121, 31, 157, 921600, "audio_prefix", False, "model_960x960.safetensors"),
        "960x960_10s": (24.0, 10.0, 241, 61, 314, 921600, "audio_prefix", False, "model_960x960_10s.safetensors"),
        "720x720_5s_fp8": (24.0, 5.0, 121, 31, 157, 518400, "audcap", True, "model_fp8_e4m3fn.safetensors"),
    }
    files = [(f.folders[0], f.name) for f in get_variant("Ovi 720x720 5s").files[1:]]
    assert files == [("vae", "wan2.2_vae.safetensors"), ("vae", "mmaudio_vae_16k_fp32.safetensors"),
                     ("vae", "mmaudio_vocoder_bigvgan_best_netG_fp32.safetensors")]
    with pytest.raises(ValueError, match="unknown Ovi variant"):
        get_variant("Ovi 1080p")


@pytest.fixture(scope="module")
def ovi_header(reference_dir):
    keys = json.loads((reference_dir / "ovi_full_keys.json").read_text())["keys"]
    return {k: {"shape": shape, "dtype": "BF16"} for k, (shape, _) in keys.items()}


def test_full_ovi_checkpoint_is_recognised_by_shapes(ovi_header):
    assert uses_ovi_codecs(ovi_header)
    tiny = dict(ovi_header)
    tiny["video_model.patch_embedding.weight"] = {"shape": [128, 16, 1, 2, 2], "dtype": "F32"}
    assert not uses_ovi_codecs(tiny)


@pytest.mark.parametrize("name, key", [
    ("model.safetensors", "720x720_5s"),
    ("Ovi/model_960x960.safetensors", "960x960_5s"),
    ("model_960x960_10s.safetensors", "960x960_10s"),
    ("model_fp8_e4m3fn.safetensors", "720x720_5s_fp8"),
    ("my_ovi_960x960_10s_bf16.safetensors", "960x960_10s"),
    ("ovi-960-finetune.safetensors", "960x960_5s"),
])
def test_variant_from_file_name(name, key):
    assert variant_from_name(name).key == key


def test_variant_when_only_the_dtype_or_nothing_tells(ovi_header):
    # 720 and 960 files have identical shapes: a name that says nothing is taken for the 720x720 5s model...
    variant, reason = recognise_variant("my_ovi.safetensors", ovi_header)
    assert variant.key == "720x720_5s" and "default" in reason
    # ...unless its matrices are fp8: the published fp8 file is the 720 one.
    fp8 = {k: dict(v, dtype="F8_E4M3") if k.endswith("q.weight") else v for k, v in ovi_header.items()}
    assert recognise_variant("my_ovi.safetensors", fp8)[0].key == "720x720_5s_fp8"
    assert recognise_variant("model.safetensors", fp8)[0].key == "720x720_5s_fp8"
    assert recognise_variant("model_960x960.safetensors", fp8)[0].key == "960x960_5s"


# ------------------------------------------------------------------------------------------------ files

def test_variant_files_are_found_in_comfyui_folders(tmp_path):
    variant = get_variant("Ovi 960x960 10s")
    written = write_ovi_files(tmp_path, variant, text_encoder=True)
    files = find_variant_files(variant, folder_tree_finder(tmp_path))
    assert files.model == written["model"]          # found in a subfolder: diffusion_models/Ovi/
    assert (files.video_vae, files.audio_vae, files.vocoder) == (written["video_vae"], written["audio_vae"],
                                                                  written["vocoder"])
    weights, config_dir = find_text_encoder_files(folder_tree_finder(tmp_path))
    assert weights.endswith("text_encoders/umt5_xxl_fp16.safetensors") and config_dir.endswith("umt5-xxl")


def test_missing_files_are_named_with_their_folder(tmp_path):
    variant = get_variant("Ovi 720x720 5s")
    with pytest.raises(FileNotFoundError, match=r"Ovi 720x720 5s: joint model file 'model.safetensors' not found "
                                                r"in models/diffusion_models"):
        find_variant_files(variant, folder_tree_finder(tmp_path))
    write_ovi_files(tmp_path, variant)
    (tmp_path / "vae" / "wan2.2_vae.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"'wan2.2_vae.safetensors' not found in models/vae"):
        find_variant_files(variant, folder_tree_finder(tmp_path))
    # the audio files may also sit in models/mmaudio
    (tmp_path / "vae" / "wan2.2_vae.safetensors").write_bytes(b"")
    (tmp_path / "mmaudio").mkdir()
    (tmp_path / "vae" / "mmaudio_vae_16k_fp32.safetensors").rename(tmp_path / "mmaudio" / "v1-16.safetensors")
    assert find_variant_files(variant, folder_tree_finder(tmp_path)).audio_vae.endswith("mmaudio/v1-16.safetensors")
    with pytest.raises(FileNotFoundError, match=r"'umt5_xxl_fp16.safetensors' not found in models/text_encoders"):
        find_text_encoder_files(folder_tree_finder(tmp_path))


def test_text_encoder_without_config_names_the_folder_transformers_needs(tmp_path):
    (tmp_path / "text_encoders").mkdir()
    (tmp_path / "text_encoders" / "umt5_xxl_fp16.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"expected a folder 'umt5-xxl' beside it .*config.json.*inside "
                                                r"ComfyUI the weights file alone is enough"):
        find_text_encoder_files(folder_tree_finder(tmp_path))


def test_cli_lists_the_same_variants():
    from comfyui_syncav.cli import OVI_VARIANT_KEYS

    assert OVI_VARIANT_KEYS == tuple(VARIANTS)
