"""The Ovi pipeline with stand-in codecs: Ovi's clip geometry, its text encoder, building from files."""

import pytest
import torch

from comfyui_syncav.ovi import pipeline as ovi_pipeline
from comfyui_syncav.ovi.pipeline import OviPipeline, OviTextEncoder, build_ovi_pipeline, check_codec_rates
from comfyui_syncav.files.model_folders import folder_tree_finder
from comfyui_syncav.ovi.variants import find_variant_files, get_variant

from ovi_stand_ins import StandInMMAudioCodec, StandInUMT5, StandInWanCodec, save_ovi_like, write_ovi_files


def _pipeline(tmp_path, label="Ovi 720x720 5s", **kwargs) -> OviPipeline:
    path = tmp_path / "ovi_like.safetensors"
    save_ovi_like(path)
    return build_ovi_pipeline(get_variant(label), model_path=str(path), video_codec=StandInWanCodec(),
                              audio_codec=StandInMMAudioCodec(), **kwargs)


@pytest.mark.parametrize("label, seconds, height, width, video_shape, audio_shape", [
    ("Ovi 720x720 5s", 5.0, 720, 720, (1, 48, 31, 44, 44), (1, 157, 20)),      # 704x704 px
    ("Ovi 960x960 5s", 5.0, 960, 960, (1, 48, 31, 60, 60), (1, 157, 20)),
    ("Ovi 960x960 10s", 10.0, 704, 1280, (1, 48, 61, 44, 80), (1, 314, 20)),
    ("Ovi 960x960 10s", 10.0, 16, 9, (1, 48, 61, 80, 44), (1, 314, 20)),      # portrait 16:9 -> 1280x704 px
])
def test_latent_shapes_are_ovis(tmp_path, label, seconds, height, width, video_shape, audio_shape):
    pipeline = _pipeline(tmp_path, label)
    assert pipeline.latent_shapes(seconds, height, width) == (video_shape, audio_shape)
    assert pipeline.pixel_multiple == 32


def test_pipeline_knows_its_variant(tmp_path):
    pipeline = _pipeline(tmp_path, "Ovi 960x960 5s")
    assert pipeline.prompt_style == "audio_prefix" and pipeline.name == "Ovi 960x960 5s"
    assert pipeline.model.config.prediction == "velocity"
    with pytest.raises(FileNotFoundError, match="Ovi text encoder: none configured"):
        pipeline.encode_prompts(["a cat"])
    with pytest.raises(ValueError, match="seconds"):
        pipeline.latent_shapes(0, 720, 720)


def test_text_encoder_loads_on_first_use_only():
    calls = []

    def load():
        calls.append(1)
        return StandInUMT5()

    encoder = OviTextEncoder(load, "audcap")
    assert not encoder.loaded and calls == [] and encoder.dim == 4096 and encoder.max_length == 512
    out = encoder.encode(["a cat meows", ""])
    assert out.embeddings.shape == (2, 512, 4096) and out.lengths.tolist() == [4, 1]
    encoder.encode(["again"])
    assert calls == [1] and encoder.loaded


def test_codecs_with_other_rates_are_refused(tmp_path):
    class SixteenFps(StandInWanCodec):
        fps = 16.0

    with pytest.raises(ValueError, match=r"audio RoPE scale of 0\.13.*trained with 0\.19676"):
        check_codec_rates(SixteenFps(), StandInMMAudioCodec(), rope_scale=0.19676)


def test_build_from_files_uses_the_codec_loaders(tmp_path, monkeypatch):
    variant = get_variant("Ovi 720x720 5s")
    written = write_ovi_files(tmp_path, variant)
    opened = []
    monkeypatch.setattr(ovi_pipeline, "load_video_codec",
                        lambda path, device=None, dtype=None: opened.append(path) or StandInWanCodec())
    monkeypatch.setattr(ovi_pipeline, "load_audio_codec",
                        lambda vae, vocoder, device=None, dtype=None: opened.extend([vae, vocoder])
                        or StandInMMAudioCodec())
    pipeline = build_ovi_pipeline(variant, find_variant_files(variant, folder_tree_finder(tmp_path)),
                                  blocks_on_gpu=1)
    assert opened == [written["video_vae"], written["audio_vae"], written["vocoder"]]
    assert isinstance(pipeline.video_codec, StandInWanCodec) and pipeline.model.config.name == "ovi-like"
    assert "_fusion_block" in vars(pipeline.model)          # block swap installed


def test_anchors_are_the_codecs_encodings_of_a_grey_clip_and_of_silence(tmp_path):
    pipeline = _pipeline(tmp_path)
    video_shape, audio_shape = (1, 48, 3, 2, 2), (1, 11, 20)
    static, silence = pipeline.anchors(video_shape, audio_shape)
    # Ovi's causal VAE: 3 latent frames are 1 + 4 x 2 = 9 frames of 32 x 32 px; 11 audio latents are 11 x 512 samples.
    # The stand-in codecs encode a clip to its mean level, so the anchors read back what was encoded.
    assert torch.equal(static, StandInWanCodec().encode(torch.full((1, 9, 32, 32, 3), 0.5)))
    assert torch.equal(silence, StandInMMAudioCodec().encode(torch.zeros(1, 1, 11 * 512)))
    assert pipeline.anchors(video_shape, audio_shape)[0] is static                  # encoded once per shape
    longer = pipeline.anchors((1, 48, 5, 2, 2), (1, 19, 20))
    assert longer[0].shape == (1, 48, 5, 2, 2) and longer[1].shape == (1, 19, 20)

    frames, waveform = pipeline.decode(torch.full(video_shape, 2.0), torch.full(audio_shape, 0.5))
    assert frames.shape == (1, 9, 32, 32, 3) and waveform.shape == (1, 1, 11 * 512)
    assert torch.allclose(frames, torch.sigmoid(torch.tensor(2.0)).expand_as(frames))    # the stand-ins' decoders
    assert torch.allclose(waveform, torch.tanh(torch.tensor(0.5)).expand_as(waveform))


def test_cli_generate_with_an_ovi_model_names_missing_files(tmp_path, capsys):
    from comfyui_syncav.cli import main

    out = str(tmp_path / "clip.mp4")
    assert main(["generate", "--model", "960x960_10s", "--models-dir", str(tmp_path), "--prompt", "a cat",
                 "--out", out]) == 2
    assert "'model_960x960_10s.safetensors' not found in models/diffusion_models" in capsys.readouterr().err
    assert main(["generate", "--prompt", "a cat", "--speech", "hello", "--out", out]) == 2
    assert "--speech: this model does not speak" in capsys.readouterr().err


def test_cli_generate_with_an_ovi_model_builds_its_prompt_clip_and_negatives(tmp_path, monkeypatch):
    """generate --model <Ovi variant>: Ovi's one prompt in the variant's style for both towers, the variant's clip, and
    Ovi's own negatives unless --negative is given (the generation itself, the library's, stood in for)."""
    from comfyui_syncav.cli import main
    from comfyui_syncav.generation import generate

    class Generated(Exception):
        pass

    calls = []

    def generate_clip(pipeline, video_prompt, audio_prompt=None, **settings):
        calls.append(dict(settings, pipeline=pipeline, video_prompt=video_prompt, audio_prompt=audio_prompt))
        raise Generated()

    write_ovi_files(tmp_path, get_variant("960x960_10s"), text_encoder=True)
    monkeypatch.setattr(ovi_pipeline, "load_video_codec", lambda path, device=None, dtype=None: StandInWanCodec())
    monkeypatch.setattr(ovi_pipeline, "load_audio_codec",
                        lambda vae, vocoder, device=None, dtype=None: StandInMMAudioCodec())
    monkeypatch.setattr(generate, "generate_clip", generate_clip)
    out = tmp_path / "clip.mp4"
    args = ["generate", "--model", "960x960_10s", "--models-dir", str(tmp_path), "--prompt", "A man waves.",
            "--speech", "Hello!", "--sound", "A cheerful voice.", "--out", str(out)]
    for extra in ([], ["--negative", "blur"]):
        with pytest.raises(Generated):
            main(args + extra)
    ovi, typed = calls
    assert ovi["video_prompt"] == ovi["audio_prompt"] == "A man waves. <S>Hello!<E> Audio: A cheerful voice."
    # No size given: the clip is the pipeline's own (generate_clip resolves None to pipeline.default_clip).
    assert (ovi["seconds"], ovi["height_px"], ovi["width_px"]) == (None, None, None)
    assert ovi["pipeline"].default_clip == (10.0, 960, 960)
    assert isinstance(ovi["pipeline"], OviPipeline) and ovi["pipeline"].variant.key == "960x960_10s"
    assert (ovi["video_negative"], ovi["audio_negative"]) == ("jitter, bad hands, blur, distortion",
                                                              "robotic, muffled, echo, distorted")
    assert (typed["video_negative"], typed["audio_negative"]) == ("blur", "blur")
    assert not out.exists()
