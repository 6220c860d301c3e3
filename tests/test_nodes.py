"""The ComfyUI nodes, run as plain Python (no ComfyUI): their declared contract, the generation chain, errors.

ComfyUI calls node functions under ``torch.inference_mode()``; the chain here does too.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from comfyui_syncav.model.checkpoint import save_joint_model
from comfyui_syncav.model.config import get_preset
from comfyui_syncav.model.joint import JointModel
from comfy_nodes import NODE_CLASSES, info, node, options
from comfyui_syncav.nodes import comfy_bridge
from comfyui_syncav.nodes.comfy_types import SyncAVCodecs, joint_model_of
from comfyui_syncav.ovi.checkpoint_choice import EMBEDDED_DEFAULT

STEPS = 3
PRIMITIVES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


@pytest.mark.parametrize("key", sorted(NODE_CLASSES))
def test_node_contract(key):
    entry = info(key)
    assert key.startswith("SyncAV") and entry["name"] == key
    assert entry["display_name"].startswith("SyncAV "), f"{key}: no display name"
    spec = entry["input"]
    assert isinstance(spec.get("required"), dict) and spec["required"]
    assert set(spec) <= {"required", "optional", "hidden"}
    for name, item in {**spec["required"], **spec.get("optional", {})}.items():
        kind = item[0]
        options = item[1] if len(item) == 2 else {}
        assert options.get("tooltip"), f"{key}.{name}: no tooltip"
        if kind == "COMBO":
            choices = options["options"]
            assert choices and all(isinstance(v, str) for v in choices), f"{key}.{name}: combo must list strings"
            assert options.get("default", choices[0]) in choices
        else:
            assert isinstance(kind, str) and kind == kind.upper(), f"{key}.{name}: bad type {kind!r}"
        if kind in ("INT", "FLOAT"):
            for k in ("default", "min", "max"):
                assert k in options, f"{key}.{name}: {kind} without {k}"
            assert options["min"] <= options["default"] <= options["max"], f"{key}.{name}: default out of range"
            if kind == "INT":
                assert all(isinstance(options[k], int) for k in ("default", "min", "max"))
        if kind == "STRING" and not options.get("forceInput"):
            assert isinstance(options.get("default"), str), f"{key}.{name}: STRING without a default"
    outputs = entry["output"]
    assert outputs and all(isinstance(t, str) for t in outputs)
    assert len(entry["output_name"]) == len(outputs) and all(entry["output_name"])
    assert all(n != n.upper() for n in entry["output_name"]), f"{key}: outputs named by their types"
    assert len(entry["output_tooltips"]) == len(outputs) and all(entry["output_tooltips"])
    assert entry["category"] == "SyncAV"
    assert isinstance(entry["description"], str) and entry["description"]
    # every input is a parameter of execute (ComfyUI passes them by name)
    params = inspect.signature(NODE_CLASSES[key].execute).parameters
    assert set(spec["required"]) | set(spec.get("optional", {})) <= set(params), f"{key}: inputs without a parameter"


def test_display_names_are_distinct():
    names = [info(key)["display_name"] for key in NODE_CLASSES]
    assert len(set(names)) == len(names) == 15


def test_root_package_offers_the_nodes_through_comfy_entrypoint():
    import asyncio

    import comfyui_syncav
    extension = asyncio.run(comfyui_syncav.comfy_entrypoint())
    assert asyncio.run(extension.get_node_list()) == list(NODE_CLASSES.values())



# ------------------------------------------------------------------------------------------------ chain

@pytest.fixture(scope="module")
def loaded():
    with torch.inference_mode():
        return node("SyncAVLoader").load(EMBEDDED_DEFAULT, "auto")


def generate(loaded, seed=0, video_prompt="a red ball bounces on the floor", audio_prompt="a thud at each bounce",
             seconds=2.0, size=32, batch=1, slg_blocks="", steps=STEPS, **overrides):
    model, codecs, text_encoder = loaded
    settings = dict(solver="unipc", shift=3.0, text_scale_video=4.0, text_scale_audio=4.0, sync_scale_video=2.0,
                    sync_scale_audio=2.0, sync_start=0.0, sync_end=1.0)
    settings.update(overrides)
    with torch.inference_mode():
        (conditioning,) = node("SyncAVTextEncode").encode(text_encoder, video_prompt, audio_prompt, "", "")
        latent, _ = node("SyncAVEmptyLatent").generate(codecs, seconds, size, size, batch)
        (sampled,) = node("SyncAVSampler").sample(model, conditioning, latent, codecs, seed, steps,
                                                  slg_blocks=slg_blocks, **settings)
        return node("SyncAVDecode").decode(codecs, sampled), sampled


def test_chain_gives_frames_audio_and_fps(loaded):
    (images, audio, fps), latent = generate(loaded)
    assert fps == 16.0 and isinstance(fps, float)
    assert images.shape == (32, 32, 32, 3) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert set(audio) == {"waveform", "sample_rate"}
    assert audio["sample_rate"] == 8000 and isinstance(audio["sample_rate"], int)
    wave = audio["waveform"]
    assert wave.shape == (1, 1, 16000) and wave.dtype == torch.float32 and wave.device.type == "cpu"
    assert wave.shape[-1] / audio["sample_rate"] == images.shape[0] / fps == 2.0
    assert torch.isfinite(images).all() and torch.isfinite(wave).all()
    assert latent["fps"] == 16.0 and latent["sample_rate"] == 8000
    assert latent["video"].shape == (1, 16, 16, 8, 8) and latent["audio"].shape == (1, 250, 32)


def test_same_seed_same_clip_other_seed_other_clip(loaded):
    (images_a, audio_a, _), _ = generate(loaded, seed=7)
    (images_b, audio_b, _), _ = generate(loaded, seed=7)
    (images_c, audio_c, _), _ = generate(loaded, seed=8)
    assert torch.equal(images_a, images_b) and torch.equal(audio_a["waveform"], audio_b["waveform"])
    assert not torch.equal(images_a, images_c) and not torch.equal(audio_a["waveform"], audio_c["waveform"])


def test_batch_of_clips_plays_one_after_another(loaded):
    """A batch decodes to its clips' frames one after another, each clip's sound in its own track."""
    _, codecs, _ = loaded
    (images, audio, _), latent = generate(loaded, batch=2, steps=1)
    assert images.shape == (64, 32, 32, 3) and audio["waveform"].shape == (2, 1, 16000)
    for row in range(2):
        one = {**latent, "video": latent["video"][row:row + 1], "audio": latent["audio"][row:row + 1]}
        with torch.inference_mode():
            frames, sound, _ = node("SyncAVDecode").decode(codecs, one)
        torch.testing.assert_close(images[32 * row:32 * (row + 1)], frames, rtol=0, atol=1e-6)
        torch.testing.assert_close(audio["waveform"][row], sound["waveform"][0], rtol=0, atol=1e-6)
    # each clip has its own noise: 0.034 apart after this one step on the shipped weights, 0 with shared noise
    assert (images[:32] - images[32:]).abs().max() > 0.01


def sample_latent(loaded, steps=1, solver="euler", video_negative="", audio_negative="", **settings):
    """(video, audio) latents from the Sampler node; every guidance scale 1 unless given."""
    model, codecs, text_encoder = loaded
    options = dict(shift=3.0, text_scale_video=1.0, text_scale_audio=1.0, sync_scale_video=1.0,
                   sync_scale_audio=1.0, sync_start=0.0, sync_end=1.0, slg_blocks="")
    options.update(settings)
    with torch.inference_mode():
        (cond,) = node("SyncAVTextEncode").encode(text_encoder, "a red ball bounces on the floor",
                                                  "a thud at each bounce", video_negative, audio_negative)
        latent, _ = node("SyncAVEmptyLatent").generate(codecs, 2.0, 32, 32, 1)
        (out,) = node("SyncAVSampler").sample(model, cond, latent, codecs, 0, steps, solver=solver, **options)
    return out["video"], out["audio"]


def test_scales_of_one_are_the_plain_joint_sampler(loaded):
    from comfyui_syncav.generation.generate import initial_noise
    from comfyui_syncav.guidance.sampling import sample_av

    video, audio = sample_latent(loaded, steps=2, solver="unipc")
    # Negatives, skipped blocks and the sync interval act only through guidance: at scale 1 they change nothing.
    same = sample_latent(loaded, steps=2, solver="unipc", video_negative="blur", audio_negative="hiss",
                         slg_blocks="1", sync_start=0.5, sync_end=0.5)
    assert torch.equal(video, same[0]) and torch.equal(audio, same[1])
    # ...and the node is the library's plain flow-matching sampler on the seed's noise.
    model, _, text_encoder = loaded
    with torch.inference_mode():
        positive = (text_encoder.encode(["a red ball bounces on the floor"]),
                    text_encoder.encode(["a thud at each bounce"]))
        expected = sample_av(joint_model_of(model), *initial_noise(video.shape, audio.shape, 0), positive, steps=2,
                             solver="unipc", shift=3.0)
    assert torch.equal(video, expected[0].float()) and torch.equal(audio, expected[1].float())
    unipc, euler = sample_latent(loaded, steps=3, solver="unipc"), sample_latent(loaded, steps=3, solver="euler")
    assert (unipc[0] - euler[0]).abs().max() > 1e-3                        # the solver input is used


@pytest.mark.parametrize("scale, stream", [("text_scale_video", 0), ("text_scale_audio", 1),
                                           ("sync_scale_video", 0), ("sync_scale_audio", 1)])
def test_each_scale_moves_its_own_stream_linearly(loaded, scale, stream):
    """One Euler step from noise lands at noise - sigma v with v = J + (g - 1)(J - other pass): the result is affine
    in each scale g, and a stream's update reads only its own scales."""
    plain = sample_latent(loaded)
    two, three = sample_latent(loaded, **{scale: 2.0}), sample_latent(loaded, **{scale: 3.0})
    step = two[stream] - plain[stream]
    assert step.abs().max() > 0.1                                          # measured 0.44 to 0.62
    # Measured agreement 1.4e-6 (the passes run in batches of other sizes, which rounds differently).
    torch.testing.assert_close(three[stream] - plain[stream], 2 * step, rtol=0, atol=1e-4)
    torch.testing.assert_close(two[1 - stream], plain[1 - stream], rtol=0, atol=1e-4)


def test_negatives_and_skipped_blocks_act_through_the_text_scales(loaded):
    # Text guidance on the video only: a negative moves the video, and in one step never the audio (whose update
    # reads only the joint pass; the towers' cross-attention does carry the negative into the audio of that pass).
    video_only = dict(text_scale_video=4.0)
    video, audio = sample_latent(loaded, **video_only)
    negative_video, negative_audio = sample_latent(loaded, video_negative="a blue ball", **video_only)
    assert (negative_video - video).abs().max() > 0.01 and torch.equal(negative_audio, audio)
    # Skip-layer guidance changes the negative pass, and so whatever text guidance reads it.
    both = dict(text_scale_video=4.0, text_scale_audio=4.0)
    video, audio = sample_latent(loaded, **both)
    slg_video, slg_audio = sample_latent(loaded, slg_blocks="1", **both)
    assert (slg_video - video).abs().max() > 0.01 and (slg_audio - audio).abs().max() > 0.01


def test_sync_interval_chooses_the_guided_steps(loaded):
    sync = dict(sync_scale_video=3.0, sync_scale_audio=3.0, steps=4)
    plain = sample_latent(loaded, steps=4)
    everywhere = sample_latent(loaded, **sync)
    late = sample_latent(loaded, sync_start=0.5, **sync)
    nowhere = sample_latent(loaded, sync_start=0.5, sync_end=0.5, **sync)
    assert all(torch.equal(a, b) for a, b in zip(nowhere, plain))          # an empty interval is no sync guidance
    for a, b in ((late, plain), (late, everywhere)):
        assert (a[0] - b[0]).abs().max() > 1e-3 and (a[1] - b[1]).abs().max() > 1e-3


def test_empty_audio_prompt_falls_back_to_the_video_prompt(loaded):
    _, _, text_encoder = loaded
    with torch.inference_mode():
        (c,) = node("SyncAVTextEncode").encode(text_encoder, "a drum is hit", "  ", "", "")
    video, audio = c.positive
    assert torch.equal(video.embeddings, audio.embeddings) and torch.equal(video.lengths, audio.lengths)
    assert c.prompts["audio_prompt"] == "a drum is hit"


# ------------------------------------------------------------------------------------------------ errors

def test_empty_video_prompt_is_refused(loaded):
    with pytest.raises(ValueError, match="video_prompt"):
        generate(loaded, video_prompt="   ")


@pytest.mark.parametrize("text, expected", [("a", "comma-separated"), ("1;2", "comma-separated"),
                                            ("-1", "comma-separated"), ("1, 99", r"out of range.*0\.\.5")])
def test_bad_slg_blocks_are_refused(loaded, text, expected):
    with pytest.raises(ValueError, match=f"slg_blocks.*{expected}"):
        generate(loaded, slg_blocks=text, steps=1)


@pytest.mark.parametrize("size", [30, 4, 0])
def test_bad_size_is_refused(loaded, size):
    _, codecs, _ = loaded
    with pytest.raises(ValueError, match=f"height and width must be positive multiples of {codecs.pixel_multiple}"):
        node("SyncAVEmptyLatent").generate(codecs, 2.0, size, size, 1)


def test_bad_seconds_and_sync_interval_are_refused(loaded):
    _, codecs, _ = loaded
    with pytest.raises(ValueError, match="seconds"):
        node("SyncAVEmptyLatent").generate(codecs, 0.0, 32, 32, 1)
    with pytest.raises(ValueError, match="sync_start / sync_end"):
        generate(loaded, sync_start=0.8, sync_end=0.2, steps=1)


def test_wrong_inputs_are_named(loaded):
    # MODEL is every model's type in ComfyUI: an image model wired in gets a clear error from the node.
    with pytest.raises(ValueError, match="model: expected the MODEL output of SyncAV Loader"):
        joint_model_of(object())
    # The SyncAV values have types of their own, so ComfyUI refuses a wrong link before a node runs.
    def input_type(name, input_name, kind="required"):
        return info(name)["input"][kind][input_name][0]

    assert input_type("SyncAVDecode", "latent", "optional") == "SYNCAV_LATENT"
    assert input_type("SyncAVDecode", "samples", "optional") == "LATENT"
    with pytest.raises(ValueError, match="connect exactly one of 'latent'"):
        node("SyncAVDecode").decode(None)
    assert input_type("SyncAVDecode", "codecs") == "SYNCAV_CODECS"
    assert input_type("SyncAVTextEncode", "text_encoder") == "SYNCAV_TEXT_ENCODER"
    assert info("SyncAVSampler")["output"] == ["SYNCAV_LATENT"] and info("SyncAVLoader")["output"][1:] == \
        ["SYNCAV_CODECS", "SYNCAV_TEXT_ENCODER"]


# ------------------------------------------------------------------------------------------------ loader

def test_loader_under_inference_mode_keeps_trainable_weights():
    with torch.inference_mode():
        model, codecs, text_encoder = node("SyncAVLoader").load(EMBEDDED_DEFAULT, "auto")
    params = list(model.model.parameters())
    assert params and not any(p.is_inference() for p in params)
    assert not any(p.is_inference() for p in text_encoder.network.parameters())
    # ComfyUI's LoRA key convention: diffusion_model.<module path>
    keys = list(model.model.state_dict())
    assert all(k.startswith("diffusion_model.") for k in keys)
    assert "diffusion_model.video_model.patch_embedding.weight" in keys
    assert isinstance(codecs, SyncAVCodecs) and codecs.fps == 16.0 and codecs.sample_rate == 8000


def test_loader_dtype(loaded):
    with torch.inference_mode():
        model, _, _ = node("SyncAVLoader").load(EMBEDDED_DEFAULT, "bf16")
    assert model.model.get_dtype() == torch.bfloat16
    assert loaded[0].model.get_dtype() == torch.float32


def test_loader_reads_a_file_made_for_the_embedded_codecs(loaded, tmp_path):
    joint = loaded[0].model.diffusion_model
    path = tmp_path / "mine.safetensors"
    save_joint_model(joint, path)
    with torch.inference_mode():
        model, codecs, _ = node("SyncAVLoader").load(str(path), "auto")
    sd = model.model.diffusion_model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in joint.state_dict().items())
    assert not any(p.is_inference() for p in model.model.parameters())
    assert codecs.pipeline.name == "mine"


def test_loader_refuses_other_codecs_and_missing_files(tmp_path):
    tiny = get_preset("tiny")
    other = tiny.replace(video=dataclasses.replace(tiny.video, in_channels=48, out_channels=48),
                         audio=dataclasses.replace(tiny.audio, in_channels=20, out_channels=20))
    path = tmp_path / "ovi_like.safetensors"
    save_joint_model(JointModel(other), path)
    with pytest.raises(ValueError, match=r"video latent channels 48.*audio latent channels 20.*not supported by "
                                         r"this loader yet"):
        node("SyncAVLoader").load(str(path), "auto")
    with pytest.raises(FileNotFoundError, match="checkpoint: 'nowhere.safetensors' not found in "
                                                "models/diffusion_models"):
        node("SyncAVLoader").load("nowhere.safetensors", "auto")
    with pytest.raises(ValueError, match="dtype"):
        node("SyncAVLoader").load(EMBEDDED_DEFAULT, "fp8")


def test_sampler_drives_comfyuis_progress_bar_and_stops_at_once_on_cancel(loaded, monkeypatch):
    """Inside ComfyUI (its ProgressBar and interruption check stood in for) the bar reaches each step as it ends,
    and Cancel stops sampling before the next model call."""
    from types import SimpleNamespace

    class Interrupted(Exception):
        pass

    bars, checks, cancel_at_check, previews = [], [], [None], []

    class ProgressBar:
        def __init__(self, total):
            self.total, self.values = total, []
            bars.append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.values.append((value, total))
            previews.append(preview)

    def throw_exception_if_processing_interrupted():
        checks.append(len(checks))
        if len(checks) == cancel_at_check[0]:
            raise Interrupted()

    modules = {"comfy.utils": SimpleNamespace(ProgressBar=ProgressBar),
               "comfy.model_management": SimpleNamespace(
                   throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted)}
    monkeypatch.setattr(comfy_bridge, "comfy_available", lambda: True)

    def comfy_module(name):
        if name not in modules:     # e.g. comfy.nested_tensor: absent, as in ComfyUI 0.3.64
            raise ImportError(name)
        return modules[name]

    monkeypatch.setattr(comfy_bridge, "_comfy", comfy_module)
    forwards = []
    handle = joint_model_of(loaded[0]).register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        generate(loaded, steps=4)
        assert [(bar.total, bar.values) for bar in bars] == [(4, [(1, 4), (2, 4), (3, 4), (4, 4)])]
        assert len(checks) == len(forwards) == 4
        # Each step sends a live preview: the middle latent frame in colour (8 x 8 latent pixels for 32 x 32 px).
        assert [(kind, image.size, size) for kind, image, size in previews] == [("JPEG", (8, 8), 512)] * 4
        assert len({image.tobytes() for _, image, _ in previews}) == 4   # the picture changes as noise goes
        bars.clear(), forwards.clear()
        cancel_at_check[0] = len(checks) + 2                   # Cancel pressed during the second step
        with pytest.raises(Interrupted):
            generate(loaded, steps=4)
        assert bars[0].values == [(1, 4), (2, 4)] and len(forwards) == 2
    finally:
        handle.remove()


def test_sampler_outside_comfyui_shows_a_tqdm_bar_to_its_end(loaded, monkeypatch):
    import tqdm.auto

    bars = []

    class Bar:
        def __init__(self, total, desc, leave):
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    generate(loaded, steps=3)
    assert [(bar.total, bar.n, bar.closed, bar.desc) for bar in bars] == [(3, 3, True, "SyncAV sampling")]


# ------------------------------------------------------------------------------------------------ Ovi

# The Loader's Ovi presets and the file name Ovi publishes each model under.
OVI_PUBLISHED_FILES = {"Ovi 720x720 5s": "model.safetensors", "Ovi 960x960 5s": "model_960x960.safetensors",
                       "Ovi 960x960 10s": "model_960x960_10s.safetensors",
                       "Ovi 720x720 5s fp8": "model_fp8_e4m3fn.safetensors"}


@pytest.fixture
def ovi_models_dir(tmp_path, monkeypatch):
    """An empty ComfyUI-style models folder the stand-in folder lookup searches, with the Ovi codec loaders
    patched to stand-ins (their real files are gigabytes)."""
    from ovi_stand_ins import StandInMMAudioCodec, StandInWanCodec

    from comfyui_syncav.ovi import pipeline as ovi_pipeline

    monkeypatch.setenv("SYNCAV_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(ovi_pipeline, "load_video_codec", lambda path, device=None, dtype=None: StandInWanCodec())
    monkeypatch.setattr(ovi_pipeline, "load_audio_codec",
                        lambda vae, vocoder, device=None, dtype=None: StandInMMAudioCodec())
    return tmp_path


def test_every_loader_choice_loads_or_asks_for_its_own_file(ovi_models_dir):
    """Outside ComfyUI nothing is installed: the checkpoint combo starts with the embedded default (the widget's
    default runs with no file), and each Ovi preset it lists asks for that model's own published file."""
    import re

    assert not comfy_bridge.comfy_available()            # these tests exercise the stand-ins
    combo = options("SyncAVLoader", "checkpoint")
    assert combo[0] == EMBEDDED_DEFAULT
    assert [choice for choice in combo if choice.startswith("Ovi ")] == list(OVI_PUBLISHED_FILES)
    for label, file_name in OVI_PUBLISHED_FILES.items():
        with pytest.raises(FileNotFoundError, match=re.escape(f"{label}: joint model file '{file_name}' not found "
                                                              "in models/diffusion_models")):
            node("SyncAVLoader").load(label, "auto")


def test_ovi_preset_names_the_missing_file_and_its_folder(ovi_models_dir):
    from ovi_stand_ins import write_ovi_files

    from comfyui_syncav.ovi.variants import get_variant

    with pytest.raises(FileNotFoundError, match=r"'model.safetensors' not found in models/diffusion_models"):
        node("SyncAVLoader").load("Ovi 720x720 5s", "auto")
    write_ovi_files(ovi_models_dir, get_variant("Ovi 720x720 5s"))
    (ovi_models_dir / "vae" / "mmaudio_vocoder_bigvgan_best_netG_fp32.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"vocoder.*'mmaudio_vocoder_bigvgan_best_netG_fp32.safetensors' not "
                                                r"found in models/vae or models/mmaudio"):
        node("SyncAVLoader").load("Ovi 720x720 5s", "auto")


def test_ovi_preset_chain_with_a_clip_input(ovi_models_dir):
    from ovi_stand_ins import StandInClip, write_ovi_files

    from comfyui_syncav.ovi.pipeline import OviPipeline
    from comfyui_syncav.ovi.variants import get_variant

    write_ovi_files(ovi_models_dir, get_variant("Ovi 720x720 5s"))
    with torch.inference_mode():
        model, codecs, text_encoder = node("SyncAVLoader").load("Ovi 720x720 5s", "auto")
    assert isinstance(codecs.pipeline, OviPipeline) and codecs.pipeline.variant.key == "720x720_5s"
    assert (codecs.fps, codecs.sample_rate, codecs.pixel_multiple) == (24.0, 16000, 32)
    assert text_encoder.prompt_style == "audcap" and not text_encoder.loaded
    assert model.model.diffusion_model.config.prediction == "velocity"

    clip = StandInClip()
    with torch.inference_mode():
        (cond,) = node("SyncAVTextEncode").encode(text_encoder, "A man waves.", "", "", "", speech="Hello!",
                                                  sound="A cheerful voice.", clip=clip)
    prompt = "A man waves. <S>Hello!<E> <AUDCAP>A cheerful voice.<ENDAUDCAP>"
    assert clip.tokenized == [prompt, prompt, "jitter, bad hands, blur, distortion",
                              "robotic, muffled, echo, distorted"]
    video, audio = cond.positive
    assert video.embeddings.shape == (1, 512, 4096) and video.embeddings.dtype == torch.float32
    assert video.lengths.tolist() == [8] and torch.equal(video.embeddings, audio.embeddings)   # 7 pieces + </s>
    assert not text_encoder.loaded   # the CLIP encoded: UMT5 was never loaded

    with torch.inference_mode():
        latent, _ = node("SyncAVEmptyLatent").generate(codecs, 5.0, 720, 720, 1)
    assert latent["video"].shape == (1, 48, 31, 44, 44) and latent["audio"].shape == (1, 157, 20)
    small = {"video": torch.zeros(1, 48, 3, 2, 2), "audio": torch.zeros(1, 11, 20), "fps": 24.0,
             "sample_rate": 16000}
    with torch.inference_mode():
        (sampled,) = node("SyncAVSampler").sample(model, cond, small, codecs, 0, 2, solver="euler", shift=5.0,
                                                  text_scale_video=4.0, text_scale_audio=3.0, sync_scale_video=2.0,
                                                  sync_scale_audio=2.0, sync_start=0.0, sync_end=1.0)
        images, audio_out, fps = node("SyncAVDecode").decode(codecs, sampled)
    assert torch.isfinite(sampled["video"]).all() and torch.isfinite(sampled["audio"]).all()
    assert images.shape == (9, 32, 32, 3) and fps == 24.0
    assert audio_out["sample_rate"] == 16000 and audio_out["waveform"].shape == (1, 1, 6000)   # 9 / 24 s


def test_ovi_text_encoder_without_files_or_clip_says_what_is_missing(ovi_models_dir):
    from ovi_stand_ins import write_ovi_files

    from comfyui_syncav.ovi.variants import get_variant

    write_ovi_files(ovi_models_dir, get_variant("Ovi 720x720 5s"))
    _, _, text_encoder = node("SyncAVLoader").load("Ovi 720x720 5s", "auto")
    with pytest.raises(FileNotFoundError, match=r"'umt5_xxl_fp16.safetensors' not found in models/text_encoders"):
        node("SyncAVTextEncode").encode(text_encoder, "A man waves.", "", "", "")


class FixedClip:
    """A CLIP whose every prompt encodes to ``cond`` (ComfyUI CLIPs return it in their compute dtype)."""

    def __init__(self, cond: torch.Tensor):
        self.cond = cond

    def tokenize(self, text):
        return {"umt5xxl": text}

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        return {"cond": self.cond, "pooled_output": None}


def test_comfy_clip_text_encoder_measures_pads_and_checks_the_width(caplog):
    from ovi_stand_ins import StandInClip, StandInUMT5

    from comfyui_syncav.text.comfy_clip import ComfyClipTextEncoder

    encoder = ComfyClipTextEncoder(StandInClip(), dim=4096, max_length=512)
    out = encoder.encode(["a man waves", ""])
    assert out.embeddings.shape == (2, 512, 4096) and out.embeddings.dtype == torch.float32
    assert out.lengths.tolist() == [4, 1]          # 3 words + </s>; an empty prompt is its </s> alone
    expected = StandInUMT5().encode(["a man waves", ""]).embeddings.half().float()
    assert torch.equal(out.embeddings, expected)
    assert out.embeddings[0, 4:].abs().max() == 0 and out.embeddings[0, 3].abs().max() > 0

    # a CLIP that returns fewer rows (77, as CLIP-L) is zero-padded to the model's 512
    short = torch.zeros(1, 77, 4096, dtype=torch.float16)
    short[0, :6] = 0.5
    out = ComfyClipTextEncoder(FixedClip(short), dim=4096, max_length=512).encode(["six tokens"])
    assert out.embeddings.shape == (1, 512, 4096) and out.lengths.tolist() == [6]
    assert out.embeddings[0, :6].eq(0.5).all() and out.embeddings[0, 6:].abs().max() == 0

    # more rows than the model takes: cut to 512, with a warning only when the prompt reaches past them
    long = torch.zeros(1, 600, 4096)
    long[0, :550] = 1.0
    with caplog.at_level("WARNING"):
        out = ComfyClipTextEncoder(FixedClip(long), dim=4096, max_length=512).encode(["a long prompt"])
    assert out.embeddings.shape == (1, 512, 4096) and out.lengths.tolist() == [512]
    assert "prompt of more than 512 tokens truncated: 'a long prompt'" in caplog.text
    caplog.clear()
    long[0, 300:] = 0.0
    with caplog.at_level("WARNING"):
        out = ComfyClipTextEncoder(FixedClip(long), dim=4096, max_length=512).encode(["a short prompt"])
    assert out.lengths.tolist() == [300] and "truncated" not in caplog.text

    with pytest.raises(ValueError, match=r"clip: encodes 768-wide embeddings; this model takes 4096 \(Ovi models "
                                         r"take Wan's UMT5-XXL: Load CLIP with type wan\)"):
        ComfyClipTextEncoder(StandInClip(width=768), dim=4096, max_length=512).encode(["a man"])
    with pytest.raises(ValueError, match=r"clip: expected an encoding \[1, tokens, width\], received \[512, 4096\]"):
        ComfyClipTextEncoder(FixedClip(torch.zeros(512, 4096)), dim=4096, max_length=512).encode(["a man"])
    with pytest.raises(ValueError, match="clip: expected a CLIP from ComfyUI's Load CLIP, received str"):
        ComfyClipTextEncoder("umt5_xxl_fp16.safetensors", dim=4096, max_length=512)
    with pytest.raises(ValueError, match="clip: expected a list of prompts, received str"):
        encoder.encode("a man waves")


def write_umt5_xxl_header(path, blocks: int = 24, width: int = 4096, bias_in_every_block: bool = True) -> None:
    """A safetensors file with the keys ComfyUI tells UMT5-XXL by (its last block's gated feed-forward layer, the
    relative attention bias of each block), the tensors cut down to one row: enough for the header check."""
    from comfyui_syncav.files.safetensors_io import save_tensors_atomic

    state = {}
    for block in range(blocks):
        state[f"encoder.block.{block}.layer.1.DenseReluDense.wi_1.weight"] = torch.zeros(1, width, dtype=torch.float16)
        if bias_in_every_block or block == 0:
            state[f"encoder.block.{block}.layer.0.SelfAttention.relative_attention_bias.weight"] = \
                torch.zeros(32, 1, dtype=torch.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(state, path)


def test_ovi_preset_inside_comfyui_loads_umt5_as_a_wan_clip_at_the_first_prompt(ovi_models_dir, monkeypatch):
    """Inside ComfyUI (its lookups and CLIP loader stood in for) the preset's text encoder reads the UMT5-XXL file
    alone through ComfyUI's CLIP loader, type wan, once, at the first encode; a missing or wrong file fails then."""
    from ovi_stand_ins import StandInClip, write_ovi_files

    from comfyui_syncav.files.model_folders import folder_tree_finder
    from comfyui_syncav.ovi.variants import get_variant

    write_ovi_files(ovi_models_dir, get_variant("Ovi 720x720 5s"))
    with torch.inference_mode():
        _, _, text_encoder = node("SyncAVLoader").load("Ovi 720x720 5s", "auto")
    loads = []

    def load_clip(path, clip_type):
        loads.append((path, clip_type))
        return StandInClip()

    monkeypatch.setattr(comfy_bridge, "comfy_available", lambda: True)
    monkeypatch.setattr(comfy_bridge, "find_model_file", folder_tree_finder(ovi_models_dir))
    monkeypatch.setattr(comfy_bridge, "model_folder_paths",
                        lambda folders: [str(ovi_models_dir / folder) for folder in folders])
    monkeypatch.setattr(comfy_bridge, "load_text_encoder_clip", load_clip)

    def encode():
        with torch.inference_mode():
            return node("SyncAVTextEncode").encode(text_encoder, "A man waves.", "", "", "", speech="Hello!")[0]

    with pytest.raises(FileNotFoundError, match=r"Ovi text encoder: text encoder \(UMT5-XXL\) file "
                                                r"'umt5_xxl_fp16.safetensors' not found in models/text_encoders"):
        encode()
    weights = ovi_models_dir / "text_encoders" / "umt5_xxl_fp16.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"")                                         # an interrupted download
    with pytest.raises(ValueError, match=r"Ovi text encoder for the joint model model.safetensors \(4096-wide "
                                         r"text\): .*umt5_xxl_fp16.safetensors: .*safetensors file"):
        encode()
    write_umt5_xxl_header(weights, blocks=2)
    with pytest.raises(ValueError, match=r"umt5_xxl_fp16.safetensors: not UMT5-XXL, Wan's text encoder .*found 2 "
                                         r"encoder blocks"):
        encode()
    write_umt5_xxl_header(weights, bias_in_every_block=False)        # Flux's t5xxl under UMT5's name
    with pytest.raises(ValueError, match=r"a T5-XXL encoder \(as Flux and SD3 use\), not UMT5-XXL"):
        encode()
    write_umt5_xxl_header(weights, width=768)
    with pytest.raises(ValueError, match=r"umt5_xxl_fp16.safetensors gives 768-wide embeddings, expected 4096"):
        encode()
    assert not loads and not text_encoder.loaded                     # every wrong file refused before loading

    write_umt5_xxl_header(weights)
    cond = encode()
    assert loads == [(str(weights), "wan")] and text_encoder.loaded
    video, audio = cond.positive
    assert video.embeddings.shape == (1, 512, 4096) and video.lengths.tolist() == [5]   # 4 pieces + </s>
    assert torch.equal(video.embeddings, audio.embeddings)
    assert cond.negative[0].lengths.tolist() == [6]                  # "jitter, bad hands, blur, distortion" + </s>
    encode()
    assert len(loads) == 1                                           # loaded once, kept by the Loader's output


def test_ovi_file_from_the_list_is_recognised(ovi_models_dir):
    from ovi_stand_ins import write_ovi_files

    from comfyui_syncav.ovi.variants import get_variant

    paths = write_ovi_files(ovi_models_dir, get_variant("Ovi 960x960 10s"))
    with torch.inference_mode():
        _, codecs, text_encoder = node("SyncAVLoader").load(paths["model"], "auto")
    assert codecs.pipeline.variant.key == "960x960_10s" and codecs.pipeline.name == "model_960x960_10s"
    assert text_encoder.prompt_style == "audio_prefix"
    assert codecs.latent_shapes(10.0, 704, 1280) == ((1, 48, 61, 44, 80), (1, 314, 20))


def test_ovi_fp8_preset_keeps_fp8_weights(ovi_models_dir):
    from ovi_stand_ins import write_ovi_files

    from comfyui_syncav.ovi.variants import get_variant

    write_ovi_files(ovi_models_dir, get_variant("Ovi 720x720 5s fp8"), fp8=True)
    with torch.inference_mode():
        model, _, _ = node("SyncAVLoader").load("Ovi 720x720 5s fp8", "auto")
    joint = model.model.diffusion_model
    assert joint.video_model.blocks[0].ffn[0].weight.dtype == torch.float8_e4m3fn
    assert joint.video_model.blocks[0].norm3.weight.dtype == torch.bfloat16
    assert joint.working_dtype() == torch.bfloat16


def test_text_encode_optional_inputs_left_out_change_nothing(loaded):
    """ComfyUI passes nothing for an unconnected optional input (and workflows saved before speech / sound / clip
    existed hold none): the result is the one with them empty; sound stands in only for an empty audio prompt."""
    _, _, text_encoder = loaded
    with torch.inference_mode():
        (bare,) = node("SyncAVTextEncode").encode(text_encoder, "a drum is hit", "a boom", "", "")
        (empty,) = node("SyncAVTextEncode").encode(text_encoder, "a drum is hit", "a boom", "", "", speech="",
                                                   sound="", clip=None)
        (sound,) = node("SyncAVTextEncode").encode(text_encoder, "a drum is hit", "a boom", "", "", sound="a click")
    for a, b, c in zip(bare.positive + bare.negative, empty.positive + empty.negative,
                       sound.positive + sound.negative):
        assert torch.equal(a.embeddings, b.embeddings) and torch.equal(a.lengths, b.lengths)
        assert torch.equal(a.embeddings, c.embeddings)


def test_text_encode_speech_sound_and_clip_on_the_embedded_model(loaded):
    from ovi_stand_ins import StandInClip

    _, _, text_encoder = loaded
    with pytest.raises(ValueError, match="speech: this model does not speak"):
        node("SyncAVTextEncode").encode(text_encoder, "a drum", "", "", "", speech="hello")
    with torch.inference_mode():
        (c,) = node("SyncAVTextEncode").encode(text_encoder, "a drum is hit", "", "", "", sound="a loud boom")
    assert c.prompts["audio_prompt"] == "a loud boom" and c.prompts["video_negative"] == ""
    with pytest.raises(ValueError, match="clip: encodes 4096-wide embeddings; this model takes 64"):
        node("SyncAVTextEncode").encode(text_encoder, "a drum", "", "", "", clip=StandInClip())
    with pytest.raises(ValueError, match="clip: expected a CLIP"):
        node("SyncAVTextEncode").encode(text_encoder, "a drum", "", "", "", clip="clip")


def test_loader_sync_tuned_choice_merges_the_shipped_lora(loaded, tmp_path, monkeypatch):
    from comfyui_syncav.generation import pipeline as pipeline_module
    from comfyui_syncav.runtime.lora import apply_lora, load_lora
    from comfyui_syncav.ovi.checkpoint_choice import EMBEDDED_SYNC_TUNED
    from test_cli import _write_random_lora

    combo = options("SyncAVLoader", "checkpoint")
    assert combo[:2] == [EMBEDDED_DEFAULT, EMBEDDED_SYNC_TUNED]
    shipped = tmp_path / "embedded_sync_lora.safetensors"
    _write_random_lora(shipped)
    monkeypatch.setattr(pipeline_module, "EMBEDDED_SYNC_LORA_FILE", shipped)
    with torch.inference_mode():
        tuned, _, _ = node("SyncAVLoader").load(EMBEDDED_SYNC_TUNED, "auto")
    tuned_weights = joint_model_of(tuned).state_dict()
    base_weights = joint_model_of(loaded[0]).state_dict()
    expected = pipeline_module.build_embedded_default().model
    apply_lora(expected, load_lora(shipped)[0])
    changed = [k for k in base_weights if not torch.equal(tuned_weights[k], base_weights[k])]
    assert changed and all(".ffn." in k for k in changed)        # the test LoRA targets the FFNs only
    for key, value in expected.state_dict().items():
        assert torch.allclose(tuned_weights[key], value, atol=1e-6), key

    monkeypatch.setattr(pipeline_module, "EMBEDDED_SYNC_LORA_FILE", tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match="sync LoRA"):
        node("SyncAVLoader").load(EMBEDDED_SYNC_TUNED, "auto")


def test_the_model_carries_what_comfyuis_sampling_stack_reads(loaded):
    model, codecs, _ = loaded
    module = model.model
    assert module.model_config.sampling_settings == {"shift": 3.0}        # the embedded default samples at shift 3
    assert module.model_config.unet_config == {}
    fmt = module.latent_format
    assert (fmt.latent_channels, fmt.latent_dimensions, fmt.scale_factor) == (16, 3, 1.0)
    assert fmt.latent_rgb_factors == codecs.video_codec.preview_rgb_factors()[0]   # previews in the clip's colours
    x = torch.randn(1, 16, 16, 8, 12)
    assert module.process_latent_in(x) is x and module.process_latent_out(x) is x
    # Activation bytes grow with the clip's tokens and rows: ComfyUI frees that much before sampling.
    config = joint_model_of(model).config
    one = module.memory_required([1, 16, 16, 8, 12])
    assert one == 2 * (16 * 8 * 12 // 4) * (config.video.ffn_dim + 6 * config.video.dim) * 2
    assert module.memory_required([2, 16, 16, 8, 12]) == 2 * one
    assert module.memory_required([1, 16, 32, 8, 12]) == 2 * one
