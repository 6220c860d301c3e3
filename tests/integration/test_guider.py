"""SyncCFG inside ComfyUI's own sampling stack: SamplerCustomAdvanced with the SyncAV SyncCFG Guider.

With SyncAV Sigmas, SyncAV Noise and core's euler sampler it makes the clip the SyncCFG Sampler node makes (same
seed, steps, shift and scales); other samplers and core's sigma nodes run; every sampler request is one forward of
the joint model (all passes batched).
"""

from __future__ import annotations

import pytest
import torch

STEPS, SHIFT, SEED = 4, 3.0, 7
SCALES = dict(text_scale_video=4.0, text_scale_audio=4.0, sync_scale_video=2.0, sync_scale_audio=2.0)
# Core's Euler step rebuilds the velocity from x0 ((x - x0) / sigma), SyncAV's takes it directly, so the clips differ
# by float32 rounding, which the guidance and the model's sensitivity amplify: measured on the embedded default
# (6 blocks, 18,200 steps), latents up to 10.5 in size, max |difference| 9.3e-5 (video) / 1.8e-5 (audio), mean
# 1.5e-6 / 6.0e-7; on earlier weights up to 4.2e-4 / 5.9e-4, mean 5.4e-6 / 3.7e-6 (4 blocks, 16,200 steps). The
# bounds leave about 3x over the largest of these for other CPUs and weights.
SAME_CLIP_MAX_ATOL, SAME_CLIP_MEAN_ATOL = 2e-3, 2e-5


def base_graph() -> dict:
    return {
        "1": {"class_type": "SyncAVLoader", "inputs": {"checkpoint": "embedded default", "dtype": "auto"}},
        "2": {"class_type": "SyncAVTextEncode", "inputs": {
            "text_encoder": ["1", 2], "video_prompt": "a red ball bounces on the floor",
            "audio_prompt": "a thud at each bounce", "video_negative": "", "audio_negative": ""}},
        "3": {"class_type": "SyncAVEmptyLatent", "inputs": {"codecs": ["1", 1], "seconds": 1.0, "width": 32,
                                                            "height": 32, "batch_size": 1}},
    }


def guider_graph(sampler: str = "euler", sigmas: str = "syncav", anchors: str = "harmony", noise: str = "syncav",
                 name: str = "guider") -> dict:
    graph = base_graph()
    graph["10"] = {"class_type": "SyncAVSyncCFGGuider", "inputs": {
        "model": ["1", 0], "conditioning": ["2", 0], "codecs": ["1", 1], **SCALES, "sync_sigma_max": 1.0,
        "sync_sigma_min": 0.0, "anchors": anchors, "slg_blocks": ""}}
    graph["11"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
    graph["12"] = ({"class_type": "SyncAVSigmas", "inputs": {"steps": STEPS, "shift": SHIFT}} if sigmas == "syncav"
                   else {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": sigmas,
                                                                    "steps": STEPS, "denoise": 1.0}})
    graph["13"] = ({"class_type": "SyncAVNoise", "inputs": {"codecs": ["1", 1], "noise_seed": SEED}}
                   if noise == "syncav" else {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}})
    graph["14"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["13", 0], "guider": ["10", 0], "sampler": ["11", 0], "sigmas": ["12", 0],
        "latent_image": ["3", 1]}}
    graph["15"] = {"class_type": "SyncAVTestSaveLatents", "inputs": {
        "codecs": ["1", 1], "name": name, "samples": ["14", 0], "guider": ["10", 0]}}
    graph["16"] = {"class_type": "SyncAVDecode", "inputs": {"codecs": ["1", 1], "samples": ["14", 0]}}
    graph["17"] = {"class_type": "PreviewAny", "inputs": {"source": ["16", 2]}}
    return graph


def sampler_graph(name: str = "sampler") -> dict:
    graph = base_graph()
    graph["20"] = {"class_type": "SyncAVSampler", "inputs": {
        "model": ["1", 0], "conditioning": ["2", 0], "latent": ["3", 0], "codecs": ["1", 1], "seed": SEED,
        "steps": STEPS, "solver": "euler", "shift": SHIFT, **SCALES, "sync_start": 0.0, "sync_end": 1.0,
        "slg_blocks": "", "anchors": "harmony"}}
    graph["21"] = {"class_type": "SyncAVTestSaveLatents", "inputs": {"codecs": ["1", 1], "name": name,
                                                                     "latent": ["20", 0]}}
    return graph


def run_and_load(server, graph: dict, name: str) -> dict:
    entry = server.run(graph, timeout=600)
    assert entry["status"]["status_str"] == "success", server.describe_failure(entry)
    return torch.load(server.base_dir / "output" / f"{name}.pt", weights_only=True)


def test_guider_with_syncav_sigmas_and_noise_makes_the_sampler_nodes_clip(comfy_server):
    reference = run_and_load(comfy_server, sampler_graph(), "sampler")
    guided = run_and_load(comfy_server, guider_graph(), "guider")
    assert guided["video"].shape == reference["video"].shape and guided["audio"].shape == reference["audio"].shape
    for stream in ("video", "audio"):
        difference = (guided[stream] - reference[stream]).abs()
        assert difference.max() <= SAME_CLIP_MAX_ATOL and difference.mean() <= SAME_CLIP_MEAN_ATOL, \
            f"{stream}: max {difference.max():.2e}, mean {difference.mean():.2e}"
    assert reference["video"].abs().max() > 0.1     # a real clip, not two zero latents
    # Euler asks for one denoised latent per step, and each took ONE forward of the joint model (4 passes batched).
    assert guided["denoise_calls"] == STEPS and guided["model_forwards"] == STEPS


@pytest.mark.parametrize("sampler, sigmas, anchors, noise", [
    ("dpmpp_2m", "simple", "harmony", "random"),
    ("uni_pc", "syncav", "audio_alone", "syncav"),
    ("res_multistep", "beta", "cross_modal_cut", "random"),
])
def test_other_samplers_sigmas_and_anchors_run_one_forward_per_request(comfy_server, sampler, sigmas, anchors,
                                                                        noise):
    name = f"guider_{sampler}"
    out = run_and_load(comfy_server, guider_graph(sampler, sigmas, anchors, noise, name=name), name)
    assert torch.isfinite(out["video"]).all() and torch.isfinite(out["audio"]).all()
    assert out["video"].abs().max() > 0.1
    assert out["denoise_calls"] >= STEPS and out["model_forwards"] == out["denoise_calls"]


def write_random_lora(path) -> None:
    """A SyncAV LoRA on the embedded default's FFNs with random B factors (so it changes the output)."""
    from comfyui_syncav.generation.pipeline import build_embedded_default
    from comfyui_syncav.runtime.lora import LoraSpec, add_lora, save_lora

    model = build_embedded_default().model
    add_lora(model, LoraSpec(rank=4, targets=("ffn",)))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_lora(model, path)


def test_core_lora_loader_and_model_sampling_patch_the_guiders_model(comfy_server):
    write_random_lora(comfy_server.models_dir / "loras" / "guider_test_lora.safetensors")
    base = run_and_load(comfy_server, guider_graph("euler", "simple", name="core_base"), "core_base")
    patched_graph = guider_graph("euler", "simple", name="core_patched")
    patched_graph["30"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["1", 0], "lora_name": "guider_test_lora.safetensors", "strength_model": 1.0}}
    patched_graph["10"]["inputs"]["model"] = ["30", 0]
    lora = run_and_load(comfy_server, patched_graph, "core_patched")
    change = (lora["video"] - base["video"]).abs().mean()
    assert change > 0.05, f"core's LoRA loader barely changed the guided clip: {change:.4f}"

    # ModelSamplingSD3 sets the shift core's BasicScheduler reads from the model: other sigmas, another clip.
    shifted_graph = guider_graph("euler", "simple", name="core_shift")
    shifted_graph["31"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}}
    shifted_graph["12"]["inputs"]["model"] = ["31", 0]
    shifted_graph["10"]["inputs"]["model"] = ["31", 0]
    shifted = run_and_load(comfy_server, shifted_graph, "core_shift")
    assert (shifted["video"] - base["video"]).abs().mean() > 0.05
    assert shifted["denoise_calls"] == STEPS == shifted["model_forwards"]
