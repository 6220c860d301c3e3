"""The post-training nodes as plain Python (no ComfyUI, stand-ins): AV Dataset, Temporal Negative Builder (preview),
DPO Trainer (LoRA written, resumable after a cancel), Save / Load LoRA (the sampler sees the LoRA; strength 0 is the
base exactly; a LoRA of another architecture is a clear error). Nodes run under ``torch.inference_mode()`` as in
ComfyUI."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from comfyui_syncav.model.joint import JointModel
from comfyui_syncav.runtime.lora import LoraSpec, add_lora, lora_layers, save_lora
from comfyui_syncav.files.safetensors_io import CheckpointError, load_tensors, read_header
from comfy_nodes import NODE_CLASSES, info, node, options
from comfyui_syncav.nodes import comfy_bridge
from comfyui_syncav.nodes.dpo_trainer import RUNS_FOLDER
from comfyui_syncav.ovi.checkpoint_choice import EMBEDDED_DEFAULT
from comfyui_syncav.nodes.comfy_types import SyncAVNegativeSpec
from comfyui_syncav.data.preview_source import preview_latents
from comfyui_syncav.data.av_dataset import AVClipDataset
from comfyui_syncav.bouncebench.export import write_dataset
from comfyui_syncav.negatives.curriculum import DEFAULT_CURRICULUM
from comfyui_syncav.train.loop import CHECKPOINT_NAME
from comfyui_syncav.negatives.rules import RULES


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def folders(tmp_path, monkeypatch):
    """ComfyUI's output and models folders, stand-ins in a temp folder."""
    monkeypatch.setenv("SYNCAV_OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.setenv("SYNCAV_MODELS_DIR", str(tmp_path / "models"))
    return tmp_path


@pytest.fixture(scope="module")
def loaded():
    with torch.inference_mode():
        return node("SyncAVLoader").load(EMBEDDED_DEFAULT, "auto")


def negatives_spec(loaded, rules="curriculum", progress=0.0, seed=0, dataset=None, index=0, mode="staged",
                   families="", curriculum_json=None):
    _, codecs, _ = loaded
    with torch.inference_mode():
        return node("SyncAVNegatives").build(rules, curriculum_json or DEFAULT_CURRICULUM.to_json(), mode, families,
                                             codecs, index, progress, seed, dataset=dataset)


def sample(model, loaded, steps=2):
    _, codecs, text_encoder = loaded
    with torch.inference_mode():
        (conditioning,) = node("SyncAVTextEncode").encode(text_encoder, "a red ball bouncing", "high clicks", "", "")
        latent, _ = node("SyncAVEmptyLatent").generate(codecs, 1.0, 32, 32, 1)
        (out,) = node("SyncAVSampler").sample(model, conditioning, latent, codecs, 3, steps, "euler", 3.0, 4.0, 4.0,
                                              2.0, 2.0, 0.0, 1.0)
    return out["video"], out["audio"]


def random_lora_file(joint, path, scale=0.05, seed=1):
    """A LoRA with non-zero B for ``joint``'s architecture (trained LoRAs start at B = 0)."""
    model = copy.deepcopy(joint)
    torch.manual_seed(seed)
    add_lora(model, LoraSpec(rank=2, alpha=2.0))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_(0, scale)
    save_lora(model, path)
    return path


# ------------------------------------------------------------------------------------------------ negatives

def test_negative_preview_renders_one_negative(loaded):
    spec, images, audio, text, fps = negatives_spec(loaded, progress=0.0, seed=2)
    assert isinstance(spec, SyncAVNegativeSpec) and spec.curriculum == DEFAULT_CURRICULUM
    assert images.shape == (32, 32, 32, 3) and images.dtype == torch.float32 and 0 <= images.min() <= images.max() <= 1
    assert set(audio) == {"waveform", "sample_rate"} and audio["sample_rate"] == 8000
    assert audio["waveform"].shape == (1, 1, 16000) and fps == 16.0
    rule = text.split(":", 1)[0]
    coarse = {choice.rule for choice in DEFAULT_CURRICULUM.stages[0].rules}
    assert rule in coarse, text
    assert RULES[rule].description in text and "stage 'coarse' at progress 0.00" in text
    assert "BounceBench train clip 0" in text


def test_negative_preview_follows_rules_progress_and_seed(loaded):
    texts = {seed: negatives_spec(loaded, rules="audio_shift", progress=0.9, seed=seed)[3] for seed in range(4)}
    for text in texts.values():
        assert text.startswith("audio_shift: ") and " s (sound " in text and "stage 'subtle' at progress 0.90" in text
        shift = abs(float(text.split(" by ", 1)[1].split(" s", 1)[0]))
        if "replaying" in text:          # a share of rows replays an earlier stage's coarser shifts
            assert "(replaying stage 'medium')" in text or "(replaying stage 'coarse')" in text
            assert 0.4 <= shift <= 1.5
        else:
            assert 0.08 <= shift <= 0.4, text
    assert len(set(texts.values())) > 1                                # the seed draws another negative
    _, images, audio, _, _ = negatives_spec(loaded, rules="audio_shift", progress=0.9, seed=0)
    # an audio rule leaves the frames as they are and changes the sound; a video rule the other way round
    _, codecs, _ = loaded
    video, audio_latent, _ = preview_latents(codecs, None, 0)
    clean_frames, clean_wave = codecs.decode(video[:1], audio_latent[:1])
    assert torch.equal(images, clean_frames[0]) and not torch.equal(audio["waveform"], clean_wave)
    _, images_freeze, audio_freeze, text_freeze, _ = negatives_spec(loaded, rules="video_freeze", progress=0.9)
    assert text_freeze.startswith("video_freeze: ") and " for " in text_freeze
    assert not torch.equal(images_freeze, clean_frames[0]) and torch.equal(audio_freeze["waveform"], clean_wave)


def test_negative_spec_options_and_errors(loaded):
    spec = negatives_spec(loaded, families="shift, mute")[0]
    rules = {c.rule for stage in spec.curriculum.effective_stages for c in stage.rules}
    assert rules == {"audio_shift", "audio_mute"}
    spec = negatives_spec(loaded, rules="audio_swap, video_reversal", mode="none")[0]
    assert spec.curriculum.mode == "none" and spec.rules == ("audio_swap", "video_reversal")
    assert len(spec.curriculum.effective_stages) == 1
    with pytest.raises(ValueError, match=r"rules: unknown \['audio_louder'\]"):
        negatives_spec(loaded, rules="audio_shift, audio_louder")
    with pytest.raises(ValueError, match=r"families: unknown \['loud'\]"):
        negatives_spec(loaded, families="loud")
    with pytest.raises(ValueError, match="curriculum_json: curriculum: not valid JSON"):
        negatives_spec(loaded, curriculum_json="{stages: ")
    only_swap = json.dumps({"stages": [{"until": 1.0, "rules": [{"rule": "audio_swap"}]}]})
    with pytest.raises(ValueError, match=r"rules: \['audio_shift'\] have no entry in curriculum_json"):
        negatives_spec(loaded, rules="audio_shift", curriculum_json=only_swap)
    assert info("SyncAVNegatives")["input"]["required"]["codecs"][0] == "SYNCAV_CODECS"   # checked by ComfyUI


# ------------------------------------------------------------------------------------------------ dataset

@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_dataset(folder, "train", 2, progress=False)
    return folder


def test_dataset_node_and_preview_on_its_clips(loaded, clip_folder, monkeypatch):
    _, codecs, text_encoder = loaded
    monkeypatch.chdir(clip_folder.parent)                       # relative folders: from the (stand-in) input dir
    with torch.inference_mode():
        dataset, report = node("SyncAVDataset").load(clip_folder.name, codecs, text_encoder, 2.0, 32, True)
    assert isinstance(dataset, AVClipDataset) and len(dataset) == 2 and dataset.encoded
    assert report.startswith("2 clip(s)") and "2 encoded" in report
    assert (clip_folder / ".syncav_cache").is_dir()
    _, images, audio, text, _ = negatives_spec(loaded, dataset=dataset, index=1)
    assert images.shape == (32, 32, 32, 3) and audio["waveform"].shape == (1, 1, 16000)
    assert f"clip: {dataset.clips[1].name}" in text
    with pytest.raises(ValueError, match="folder: '.*nowhere' does not exist"):
        node("SyncAVDataset").load("nowhere", codecs, text_encoder, 2.0, 32, False)
    with pytest.raises(ValueError, match="size_px: expected sides that are multiples of 8"):
        node("SyncAVDataset").load(clip_folder.name, codecs, text_encoder, 2.0, 30, False)
    assert NODE_CLASSES["SyncAVDataset"].fingerprint_inputs(folder=str(clip_folder)) != "unreadable"


# ------------------------------------------------------------------------------------------------ trainer

def train_node(loaded, spec, name="run", steps=2, resume=True, dataset=None, batch_size=1, **overrides):
    model, codecs, text_encoder = loaded
    settings = dict(objective="dpo", steps=steps, batch_size=batch_size, lr=1e-3, rank=2, beta_video=0.0,
                    beta_audio=0.0, save_every=100, output_name=name, resume=resume, seed=0)
    settings.update(overrides)
    with torch.inference_mode():
        return node("SyncAVDPOTrainer").train(model, codecs, text_encoder, spec, dataset=dataset, **settings)


class Cancelled(Exception):
    pass


def test_dpo_trainer_writes_a_lora_resumes_and_survives_a_cancel(loaded, folders, monkeypatch):
    model, _, _ = loaded
    base = {k: v.clone() for k, v in model.model.state_dict().items()}
    spec = negatives_spec(loaded)[0]

    # Cancel after the first step (ComfyUI's progress hook raises there): the LoRA of step 1 and a resumable state.
    calls = []
    original = comfy_bridge.StepProgress.__call__

    def cancel_after_first(self, step_index, total_steps, *args):
        calls.append(step_index)
        original(self, step_index, total_steps, *args)
        raise Cancelled()

    monkeypatch.setattr(comfy_bridge.StepProgress, "__call__", cancel_after_first)
    with pytest.raises(Cancelled):
        train_node(loaded, spec, steps=2)
    monkeypatch.setattr(comfy_bridge.StepProgress, "__call__", original)
    lora_file = folders / "output" / "syncav_lora" / "run.safetensors"
    run_dir = folders / "output" / RUNS_FOLDER / "run"
    assert calls == [0] and lora_file.is_file()
    assert read_header(run_dir / CHECKPOINT_NAME)[1]["step"] == "1"
    assert read_header(lora_file)[1]["step"] == "1"

    # Queue again with resume on: it continues at step 2 and hands out the model with the LoRA.
    patched, lora_path, curves = train_node(loaded, spec, steps=2)
    assert lora_path == str(lora_file) and read_header(lora_file)[1]["step"] == "2"
    assert read_header(run_dir / CHECKPOINT_NAME)[1]["step"] == "2"
    assert curves.ndim == 4 and curves.shape[0] == 1 and curves.shape[-1] == 3 and curves.dtype == torch.float32
    assert patched is not model and patched.model.diffusion_model is not model.model.diffusion_model
    merged = patched.model.diffusion_model.state_dict()
    assert any(not torch.equal(merged[k[len("diffusion_model."):]], v) for k, v in base.items())
    assert not any(p.is_inference() for p in model.model.parameters())
    # the input MODEL was never touched
    assert all(torch.equal(v, base[k]) for k, v in model.model.state_dict().items())
    # the output MODEL samples
    video, audio = sample(patched, loaded, steps=1)
    assert torch.isfinite(video).all() and torch.isfinite(audio).all()

    # resume off never overwrites a run; another rank cannot resume this one
    with pytest.raises(FileExistsError, match="output_name: a run named 'run' already exists"):
        train_node(loaded, spec, resume=False)
    with pytest.raises(ValueError, match="rank: the run 'run' was started with rank 2"):
        train_node(loaded, spec, steps=3, rank=4)
    with pytest.raises(ValueError, match="output_name: expected a file name"):
        train_node(loaded, spec, name="../escape")
    # negatives only links from the Temporal Negative Builder: ComfyUI checks the type of the link
    assert info("SyncAVDPOTrainer")["input"]["required"]["negatives"][0] == info("SyncAVNegatives")["output"][0] \
        == "SYNCAV_NEGATIVES"


def test_dpo_trainer_on_a_dataset(loaded, clip_folder):
    _, codecs, text_encoder = loaded
    with torch.inference_mode():
        dataset, _ = node("SyncAVDataset").load(str(clip_folder), codecs, text_encoder, 2.0, 32, False)
    spec = negatives_spec(loaded, rules="audio_shift")[0]
    runs = {name: train_node(loaded, spec, name=name, steps=1, dataset=data, batch_size=2, objective="sft")[1]
            for name, data in (("on_clips", dataset), ("on_clips_again", dataset), ("on_bouncebench", None))}
    meta = read_header(runs["on_clips"])[1]
    assert meta["objective"] == "sft" and meta["step"] == "1"
    clips, again, default = (load_tensors(path) for path in runs.values())
    assert all(torch.equal(clips[k], again[k]) for k in clips)                 # the same data, the same LoRA
    assert any(not torch.equal(clips[k], default[k]) for k in clips)          # the dataset is what it trained on


def test_dpo_trainer_lora_towers_and_noise_shift(loaded):
    spec = negatives_spec(loaded, rules="audio_shift")[0]
    _, lora_path, _ = train_node(loaded, spec, name="audio_only", steps=1, lora_towers="audio", noise_shift=3.0)
    keys = read_header(lora_path)[0]
    assert keys and all(k.startswith("diffusion_model.audio_model.") for k in keys)
    config = json.loads(read_header(lora_path)[1]["training_config"])
    assert config["lora"]["towers"] == ["audio"] and config["dpo"]["shift"] == 3.0
    # The default is both towers at shift 1 (the workflows saved before these inputs existed).
    _, both_path, _ = train_node(loaded, spec, name="both", steps=1)
    both_keys = read_header(both_path)[0]
    assert any(k.startswith("diffusion_model.video_model.") for k in both_keys) and set(keys) < set(both_keys)
    assert json.loads(read_header(both_path)[1]["training_config"])["dpo"]["shift"] == 1.0
    # A run resumes only with the towers it started with; bad choices are named.
    with pytest.raises(ValueError, match="lora_towers: the run 'audio_only' was started with a LoRA on audio, "
                                         "received both"):
        train_node(loaded, spec, name="audio_only", steps=2)
    with pytest.raises(ValueError, match="lora_towers: expected one of both, video, audio"):
        train_node(loaded, spec, name="x", lora_towers="text")
    with pytest.raises(ValueError, match="noise_shift: expected a finite number > 0, got 0.0"):
        train_node(loaded, spec, name="x", noise_shift=0.0)


# ------------------------------------------------------------------------------------------------ LoRA nodes

def test_load_lora_changes_the_sampler_and_strength_zero_is_the_base(loaded, folders):
    model, _, _ = loaded
    lora_dir = folders / "models" / "syncav_lora"
    lora_dir.mkdir(parents=True)
    random_lora_file(model.model.diffusion_model, lora_dir / "random.safetensors")
    combo = options("SyncAVLoadLoRA", "lora")
    assert combo == ["none", "random.safetensors"]

    base_video, base_audio = sample(model, loaded)
    with torch.inference_mode():
        (with_lora,) = node("SyncAVLoadLoRA").load(model, "random.safetensors", 1.0, 1.0)
        (zero,) = node("SyncAVLoadLoRA").load(model, "random.safetensors", 0.0, 0.0)
        (by_path,) = node("SyncAVLoadLoRA").load(model, "none", 1.0, 1.0,
                                                 lora_path=str(lora_dir / "random.safetensors"))
    video, audio = sample(with_lora, loaded)
    assert not torch.equal(video, base_video) and not torch.equal(audio, base_audio)
    zero_video, zero_audio = sample(zero, loaded)
    assert torch.equal(zero_video, base_video) and torch.equal(zero_audio, base_audio)
    path_video, path_audio = sample(by_path, loaded)
    assert torch.equal(path_video, video) and torch.equal(path_audio, audio)
    # the input MODEL still samples the base
    again_video, again_audio = sample(model, loaded)
    assert torch.equal(again_video, base_video) and torch.equal(again_audio, base_audio)


def test_load_lora_errors_are_clear(loaded, folders):
    model, _, _ = loaded
    joint = model.model.diffusion_model
    small = dict(dim=16, ffn_dim=32, num_heads=2, num_layers=2, freq_dim=16)
    other = JointModel(joint.config.replace(video=dataclasses.replace(joint.config.video, **small),
                                            audio=dataclasses.replace(joint.config.audio, **small)))
    lora_dir = folders / "models" / "syncav_lora"
    lora_dir.mkdir(parents=True)
    random_lora_file(other, lora_dir / "micro.safetensors")
    with torch.inference_mode():
        with pytest.raises(CheckpointError, match=r"lora: lora 'micro.safetensors' does not fit this model .*"
                                                  r"LoRA gives \[out, in\] = \[16, 16\], the model's weight is "
                                                  r"\[128, 128\]"):
            node("SyncAVLoadLoRA").load(model, "micro.safetensors", 1.0, 1.0)
        with pytest.raises(ValueError, match="lora: choose a LoRA file"):
            node("SyncAVLoadLoRA").load(model, "none", 1.0, 1.0)
        with pytest.raises(FileNotFoundError, match="lora: 'gone.safetensors' not found"):
            node("SyncAVLoadLoRA").load(model, "gone.safetensors", 1.0, 1.0)
        with pytest.raises(FileNotFoundError, match="lora_path: no such file"):
            node("SyncAVLoadLoRA").load(model, "none", 1.0, 1.0, lora_path="gone.safetensors")
        strength = info("SyncAVLoadLoRA")["input"]["required"]["strength_video"][1]   # ComfyUI keeps it inside
        assert (strength["min"], strength["max"]) == (-2.0, 2.0)
        with pytest.raises(ValueError, match="model: expected the MODEL output of SyncAV Loader"):
            node("SyncAVLoadLoRA").load(object(), "micro.safetensors", 1.0, 1.0)


def test_save_lora_keeps_a_copy_in_models(loaded, folders):
    model, _, _ = loaded
    source = random_lora_file(model.model.diffusion_model, folders / "trained.safetensors")
    (path,) = node("SyncAVSaveLoRA").save(str(source), "kept", False)["result"]
    assert path == str(folders / "models" / "syncav_lora" / "kept.safetensors")
    assert open(path, "rb").read() == source.read_bytes()
    assert "kept.safetensors" in comfy_bridge.lora_names()
    with pytest.raises(FileExistsError, match="name: kept.safetensors already exists"):
        node("SyncAVSaveLoRA").save(str(source), "kept", False)
    node("SyncAVSaveLoRA").save(str(source), "kept.safetensors", True)
    with pytest.raises(ValueError, match="name: expected a file name"):
        node("SyncAVSaveLoRA").save(str(source), "a/b", False)
    not_a_lora = folders / "weights.safetensors"
    from comfyui_syncav.model.checkpoint import save_joint_model
    save_joint_model(model.model.diffusion_model, not_a_lora)
    with pytest.raises(CheckpointError, match="lora_path: .*do not follow the LoRA key convention"):
        node("SyncAVSaveLoRA").save(str(not_a_lora), "bad", False)
