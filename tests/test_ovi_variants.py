"""Ovi's variants, clip sizes and prompt format: the exact numbers and strings Ovi uses."""

import json

import pytest
import torch

from comfyui_syncav.model.config import OVI_ROPE_SCALE, get_preset
from comfyui_syncav.ovi.prompt import build_ovi_prompt, convert_style, sound_caption, speech_lines
from comfyui_syncav.ovi.sizes import audio_latent_length, frames_for_seconds, latent_lengths, \
    rope_scale_from_codecs, size_for_aspect, snap_size_to_area, video_latent_frames
from comfyui_syncav.ovi.variants import VARIANTS, find_text_encoder_files, find_variant_files, \
    get_variant, recognise_variant, uses_ovi_codecs, variant_from_name
from comfyui_syncav.files.model_folders import folder_tree_finder

from ovi_stand_ins import StandInMMAudioCodec, StandInUMT5, StandInWanCodec, write_ovi_files


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


def test_empty_negatives_become_ovis_own_per_tower_and_typed_ones_replace_them():
    """SyncAV Text Encode on an Ovi model: an empty (or blank) negative is Ovi's default negative of that tower, as
    Ovi's inference config has them; a typed one is used instead, for its tower only."""
    from comfyui_syncav.ovi.pipeline import OviTextEncoder
    from comfy_nodes import run
    from comfyui_syncav.nodes.text_encode import SyncAVTextEncode

    umt5 = StandInUMT5()
    encoder = OviTextEncoder(StandInUMT5, "audcap")

    def negatives(video_negative, audio_negative):
        (cond,) = run(SyncAVTextEncode, encoder, SCENE, "", video_negative, audio_negative)
        return [text.embeddings for text in cond.negative]

    ovi_video = umt5.encode(["jitter, bad hands, blur, distortion"]).embeddings
    ovi_audio = umt5.encode(["robotic, muffled, echo, distorted"]).embeddings
    video, audio = negatives("", "  ")
    assert torch.equal(video, ovi_video) and torch.equal(audio, ovi_audio)
    video, audio = negatives("shaky camera", "")
    assert torch.equal(video, umt5.encode(["shaky camera"]).embeddings) and torch.equal(audio, ovi_audio)


# ------------------------------------------------------------------------------------------------ variants

# Each variant: the name Ovi publishes its model file under, its clip (seconds, frames, video and audio latents),
# its default frame size, and how its prompt marks the sound.
PUBLISHED = [
    ("Ovi 720x720 5s", "model.safetensors", 5.0, 121, 31, 157, (704, 704), "<AUDCAP>a cheerful voice<ENDAUDCAP>"),
    ("Ovi 960x960 5s", "model_960x960.safetensors", 5.0, 121, 31, 157, (960, 960), "Audio: a cheerful voice"),
    ("Ovi 960x960 10s", "model_960x960_10s.safetensors", 10.0, 241, 61, 314, (960, 960), "Audio: a cheerful voice"),
    ("Ovi 720x720 5s fp8", "model_fp8_e4m3fn.safetensors", 5.0, 121, 31, 157, (704, 704),
     "<AUDCAP>a cheerful voice<ENDAUDCAP>"),
]


def _published_folder(root, model_file):
    """A models folder holding one published joint model file and the codec files under their published names."""
    (root / "diffusion_models" / "Ovi").mkdir(parents=True)
    (root / "diffusion_models" / "Ovi" / model_file).write_bytes(b"")
    (root / "vae").mkdir()
    for name in ("wan2.2_vae.safetensors", "mmaudio_vae_16k_fp32.safetensors",
                 "mmaudio_vocoder_bigvgan_best_netG_fp32.safetensors"):
        (root / "vae" / name).write_bytes(b"")
    return folder_tree_finder(root)


@pytest.mark.parametrize("label, model_file, seconds, frames, video_latents, audio_latents, size, sound", PUBLISHED)
def test_each_variant_finds_its_file_and_makes_its_clip_and_prompt(tmp_path, label, model_file, seconds, frames,
                                                                   video_latents, audio_latents, size, sound):
    variant = get_variant(label)
    assert get_variant(variant.key) is variant                       # by the CLI's key or the Loader's label
    finder = _published_folder(tmp_path, model_file)
    files = find_variant_files(variant, finder)
    assert files.model == str(tmp_path / "diffusion_models" / "Ovi" / model_file)
    assert files.video_vae.endswith("wan2.2_vae.safetensors")
    # No other variant takes this file for its own: each asks for its file by name.
    for other in VARIANTS.values():
        if other is not variant:
            with pytest.raises(FileNotFoundError, match=f"{other.label}: joint model file"):
                find_variant_files(other, finder)
    assert variant_from_name(model_file) is variant
    assert (variant.seconds, variant.frames, variant.video_latent_frames, variant.audio_latents) == \
        (seconds, frames, video_latents, audio_latents)
    assert latent_lengths(variant.seconds, variant.fps) == (frames, video_latents, audio_latents)
    assert snap_size_to_area(variant.height_px, variant.width_px, variant.area_px) == size
    assert build_ovi_prompt("A man waves.", "Hi!", "a cheerful voice", variant.prompt_style) == \
        f"A man waves. <S>Hi!<E> {sound}"


def test_a_variant_nobody_published_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown Ovi variant 'Ovi 1080p'; known: 720x720_5s, .*\(or 'Ovi 720x720 "
                                         r"5s', 'Ovi 960x960 5s'"):
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


def test_cli_generate_takes_every_variant_and_only_those(capsys):
    import re

    from comfyui_syncav.cli import build_parser

    parser = build_parser()
    base = ["generate", "--prompt", "a cat", "--out", "clip.mp4"]
    for key in VARIANTS:
        assert get_variant(parser.parse_args(base + ["--model", key]).model) is VARIANTS[key]
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--model", "1080p"])
    choices = re.findall(r"'([^']+)'", capsys.readouterr().err.split("choose from", 1)[1])
    assert choices[0] == "embedded" and set(choices[1:]) == set(VARIANTS)     # every other choice is a variant
