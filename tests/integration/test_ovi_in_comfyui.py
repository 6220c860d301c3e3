"""Ovi inside a real ComfyUI on the CPU: an fp8 joint model in Ovi's key layout with the real codec classes and a
UMT5-XXL text encoder, all at tiny widths, placed in the server's models/ folders and run through the graph a user
draws.

* The fp8 file, chosen from the Loader's file list (dtype auto), goes Loader -> Text Encode (speech + sound) ->
  Empty AV Latent (720 x 720 asked, 704 x 704 made: Ovi's sizing) -> SyncCFG Sampler (2 steps) -> Decode ->
  CreateVideo -> SaveVideo: an mp4 with 24 fps video and an audio track.
* Inside the server its matrices stay float8_e4m3fn after sampling (a test-only node reports the MODEL's weights,
  tests/integration/probe_nodes), and its frames, saved losslessly as PNG, match those of the same file loaded
  through the "Ovi 720x720 5s fp8" preset with dtype bf16. float8_e4m3fn -> bf16 is exact, so both hold the same
  numbers; on a CPU ComfyUI casts both to fp32 per call and the frames come out identical to the bit (a device
  computing in bf16 could round differently, hence a small tolerance).
* The text comes from the Loader's own text encoder: models/text_encoders/umt5_xxl_fp16.safetensors alone (no config
  or tokenizer folder), loaded through ComfyUI's CLIP loader with type wan at the first prompt. Without that file
  the first prompt fails in SyncAV Text Encode with the "not found in models/text_encoders" message.
* The preset whose joint model is missing fails at execution with the Loader's "not found in models/..." message.

The model is tiny (32 wide, 2 blocks) but takes 4096-wide text, UMT5-XXL's width, as every Ovi model does: that
is what makes the Loader recognise a file from the list as an Ovi model. The UMT5-XXL file is ComfyUI's layout
(24 blocks 4096 wide, its sentencepiece tokenizer inside as ``spiece_model``) with tiny heads, feed-forward layers
and vocabulary; the test server's probe module shrinks ComfyUI's UMT5-XXL config to match (probe_nodes).
The clip is 0.2 s (5 frames at 24 fps): at 704 x 704 px the Wan VAE decode is most of each prompt's time.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from workflow_files import combo_choices
import torch
from PIL import Image
from test_ovi_end_to_end import tiny_ovi_config, write_published_audio_files, write_wan_vae

from comfyui_syncav.cli import main
from comfyui_syncav.model.checkpoint import CONFIG_METADATA_KEY
from comfyui_syncav.runtime.fp8 import layer_weight_keys, quantize_to_fp8
from comfyui_syncav.model.joint import JointModel
from comfyui_syncav.files.media_io import probe_mp4
from comfyui_syncav.ovi.variants import AUDIO_VAE, TEXT_ENCODER, VIDEO_VAE, VOCODER
from comfyui_syncav.files.safetensors_io import read_header, save_tensors_atomic

from .probe_nodes import TINY_UMT5_XXL_CONFIG

UMT5_XXL_WIDTH = 4096
FP8_FILE = "Ovi/model_fp8_e4m3fn.safetensors"      # as listed in models/diffusion_models
ASKED_PX, MADE_PX = 720, 704                       # Ovi rescales to its 720 x 720 area in multiples of 32
SECONDS, FRAMES = 0.2, 5                           # 1 + 4k frames: 5 at 24 fps
FPS, SAMPLE_RATE_HZ = 24.0, 16000
AUDIO_LATENTS, SAMPLES_PER_AUDIO_LATENT = 5, 512   # round(4 / 24 s x 157 / 5 s) latents
PROMPT, SPEECH, SOUND = "A man waves at the camera.", "Hello there!", "A cheerful voice."
TIMINGS: dict[str, float] = {}


# ------------------------------------------------------------------------------------------------ files

def write_comfy_umt5_xxl(path: Path) -> None:
    """UMT5-XXL as ComfyUI's Wan text-encoder files hold it (encoder keys, the embedding as ``shared.weight``, the
    sentencepiece tokenizer as the byte tensor ``spiece_model``, fp16), at ComfyUI's 24 blocks and 4096 width with
    the probe's tiny heads, feed-forward layers and vocabulary. The tokenizer is trained on the test's prompts."""
    import sentencepiece
    from transformers import UMT5Config, UMT5EncoderModel

    tiny = TINY_UMT5_XXL_CONFIG
    lines = [PROMPT, SPEECH, SOUND, "jitter, bad hands, blur, distortion", "robotic, muffled, echo, distorted",
             "A woman in a yellow raincoat stands on a busy city street in the rain."] * 20
    proto = io.BytesIO()
    # UMT5's special ids: pad 0, </s> 1, unk 2, no <s>.
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=proto, vocab_size=tiny["vocab_size"], model_type="bpe",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
    config = UMT5Config(vocab_size=tiny["vocab_size"], d_model=UMT5_XXL_WIDTH, d_kv=tiny["d_kv"],
                        num_heads=tiny["num_heads"], d_ff=tiny["d_ff"], num_layers=24,
                        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
    torch.manual_seed(4)
    model = UMT5EncoderModel(config)
    state = {k: v.half() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    state["spiece_model"] = torch.frombuffer(bytearray(proto.getvalue()), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(state, path)


def write_fp8_joint_model(path: Path) -> None:
    """The tiny Ovi-layout model stored as the public fp8 conversion stores Ovi: Linear / Conv weights in
    float8_e4m3fn (no scale), norms, biases and modulation tables in bf16."""
    torch.manual_seed(0)
    model = JointModel(tiny_ovi_config(text_dim=UMT5_XXL_WIDTH))
    matrices = layer_weight_keys(model)
    state = {k: quantize_to_fp8(v) if k in matrices else v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(state, path, {CONFIG_METADATA_KEY: model.config.to_json()})


@pytest.fixture(scope="module")
def ovi_models(comfy_server, tmp_path_factory):
    """Every file the fp8 model needs, in the server's models/ folders (the joint model in diffusion_models/Ovi,
    the Wan2.2 VAE, MMAudio VAE and vocoder in vae, the UMT5-XXL file alone in text_encoders); the files are
    removed afterwards, since other tests expect a fresh server's empty file lists. Folders stay: ComfyUI's
    file-list cache stats every folder it has listed and fails (FileNotFoundError) on one that was removed."""
    models = comfy_server.models_dir
    before = {path for path in models.rglob("*") if path.is_file()}
    torch.set_num_threads(1)
    try:
        write_fp8_joint_model(models / "diffusion_models" / FP8_FILE)
        (models / "vae").mkdir(exist_ok=True)
        write_wan_vae(models / "vae" / VIDEO_VAE.name)
        vae_pth, vocoder_pth = write_published_audio_files(tmp_path_factory.mktemp("downloads"))
        assert main(["convert", str(vae_pth), str(models / "vae" / AUDIO_VAE.name)]) == 0
        assert main(["convert", str(vocoder_pth), str(models / "vae" / VOCODER.name)]) == 0
        write_comfy_umt5_xxl(models / "text_encoders" / TEXT_ENCODER.name)
        yield models
    finally:
        for path in {path for path in models.rglob("*") if path.is_file()} - before:
            path.unlink()
        if TIMINGS:
            print("\nOvi in ComfyUI, prompt wall times: "
                  + ", ".join(f"{label} {seconds:.1f} s" for label, seconds in TIMINGS.items()))


# ------------------------------------------------------------------------------------------------ graphs

def ovi_graph(checkpoint: str, dtype: str, prefix: str, save_video: bool = True) -> dict:
    """API prompt: Loader -> Text Encode -> Empty AV Latent -> SyncCFG Sampler -> Decode -> SaveImage (frames as
    PNG), the weight report after sampling, and with ``save_video`` CreateVideo -> SaveVideo (mp4)."""
    graph = {
        "1": {"class_type": "SyncAVLoader", "inputs": {"checkpoint": checkpoint, "dtype": dtype}},
        "2": {"class_type": "SyncAVTextEncode", "inputs": {
            "text_encoder": ["1", 2], "video_prompt": PROMPT, "audio_prompt": "", "video_negative": "",
            "audio_negative": "", "speech": SPEECH, "sound": SOUND}},
        "3": {"class_type": "SyncAVEmptyLatent", "inputs": {
            "codecs": ["1", 1], "seconds": SECONDS, "width": ASKED_PX, "height": ASKED_PX, "batch_size": 1}},
        "4": {"class_type": "SyncAVSampler", "inputs": {
            "model": ["1", 0], "conditioning": ["2", 0], "latent": ["3", 0], "codecs": ["1", 1], "seed": 7,
            "steps": 2, "solver": "unipc", "shift": 5.0, "text_scale_video": 4.0, "text_scale_audio": 3.0,
            "sync_scale_video": 2.0, "sync_scale_audio": 2.0, "sync_start": 0.0, "sync_end": 1.0,
            "slg_blocks": ""}},
        "5": {"class_type": "SyncAVDecode", "inputs": {"codecs": ["1", 1], "latent": ["4", 0]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": f"{prefix}/frame"}},
        "7": {"class_type": "SyncAVTestWeightReport", "inputs": {
            "model": ["1", 0], "after": ["4", 0], "codecs": ["1", 1], "text_encoder": ["1", 2]}},
    }
    if save_video:
        graph["8"] = {"class_type": "CreateVideo", "inputs": {"images": ["5", 0], "fps": ["5", 2], "audio": ["5", 1]}}
        graph["9"] = {"class_type": "SaveVideo", "inputs": {
            "video": ["8", 0], "filename_prefix": f"{prefix}/clip", "format": "mp4", "codec": "h264"}}
    return graph


def run_timed(server, label: str, prompt: dict, check: bool = True) -> dict:
    started = time.perf_counter()
    entry = server.run(prompt, timeout=600, check=check)
    TIMINGS[label] = time.perf_counter() - started
    return entry


def weight_report(entry: dict) -> dict:
    return json.loads(entry["outputs"]["7"]["text"][0])


def frames_of(server, entry: dict) -> np.ndarray:
    """The PNG frames SaveImage wrote, [F, H, W, 3] uint8, in frame order."""
    paths = sorted(server.output_files(entry, "6"), key=lambda p: p.name)
    return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])


@pytest.fixture(scope="module")
def fp8_run(comfy_server, ovi_models):
    """The fp8 file chosen from the Loader's list, dtype auto, with the mp4."""
    return run_timed(comfy_server, "fp8 file from the list, dtype auto (PNG + mp4)",
                     ovi_graph(FP8_FILE, "auto", "ovi_fp8_auto"))


@pytest.fixture(scope="module")
def bf16_run(comfy_server, ovi_models):
    """The same file through the "Ovi 720x720 5s fp8" preset, upcast to bf16 at load."""
    return run_timed(comfy_server, "fp8 preset, dtype bf16 (PNG)",
                     ovi_graph("Ovi 720x720 5s fp8", "bf16", "ovi_fp8_bf16", save_video=False))


# ------------------------------------------------------------------------------------------------ tests

def test_loader_lists_the_fp8_file_stored_as_the_public_conversion(comfy_server, ovi_models):
    header, _ = read_header(ovi_models / "diffusion_models" / FP8_FILE)
    dtypes = {entry["dtype"] for entry in header.values()}
    assert dtypes == {"F8_E4M3", "BF16"}
    assert header["video_model.blocks.0.ffn.0.weight"]["dtype"] == "F8_E4M3"
    assert header["video_model.blocks.0.ffn.0.bias"]["dtype"] == "BF16"
    assert header["video_model.blocks.0.norm3.weight"]["dtype"] == "BF16"
    assert header["video_model.text_embedding.0.weight"]["shape"] == [32, UMT5_XXL_WIDTH]
    choices = combo_choices(comfy_server.object_info("SyncAVLoader")["input"]["required"]["checkpoint"])
    assert FP8_FILE in choices and "Ovi 720x720 5s fp8" in choices


def test_fp8_file_from_the_list_makes_an_mp4_with_24_fps_video_and_audio(comfy_server, fp8_run):
    (path,) = comfy_server.output_files(fp8_run, "9")
    assert path.suffix == ".mp4" and path.parent.name == "ovi_fp8_auto"
    info = probe_mp4(path)
    print(f"\n{path.name}: {path.stat().st_size} bytes; video {info['video']}; audio {info['audio']}")
    video, audio = info["video"], info["audio"]
    assert video is not None and video["codec"] == "h264"
    assert (video["width"], video["height"]) == (MADE_PX, MADE_PX)     # 720 x 720 asked: Ovi's sizing
    assert video["fps"] == pytest.approx(FPS) and video["frames"] == FRAMES
    assert video["seconds"] == pytest.approx(FRAMES / FPS, abs=1e-3)
    assert audio is not None and audio["codec"] == "aac", "the mp4 has no audio track"
    # SaveVideo opens its aac stream with PyAV's default layout, so the mono track may come out as stereo.
    assert audio["sample_rate"] == SAMPLE_RATE_HZ and audio["channels"] in (1, 2)
    # Decode pads the vocoder's 5 x 512 samples to the frames' length; aac adds up to a frame of 1024 samples.
    assert audio["seconds"] == pytest.approx(FRAMES / FPS, abs=1024 / SAMPLE_RATE_HZ)

    frames = frames_of(comfy_server, fp8_run)
    assert frames.shape == (FRAMES, MADE_PX, MADE_PX, 3)
    assert frames.std() > 2.0, "blank frames"


def test_fp8_weights_stay_fp8_inside_comfyui(fp8_run, bf16_run):
    fp8, bf16 = weight_report(fp8_run), weight_report(bf16_run)
    print(f"\nfp8 auto: {fp8}\npreset bf16: {bf16}")
    assert fp8["pipeline"] == {"class": "OviPipeline", "name": "model_fp8_e4m3fn", "variant": "720x720_5s_fp8"}
    # The text came from UMT5-XXL loaded through ComfyUI's own CLIP loader, from the weights file alone.
    assert fp8["text_encoder"]["loaded"] and fp8["text_encoder"]["encoder"] == "ComfyClipTextEncoder"
    assert fp8["text_encoder"]["clip"] == "comfy.sd.CLIP"
    assert fp8["text_encoder"]["path"].endswith("text_encoders/umt5_xxl_fp16.safetensors")
    assert bf16["pipeline"]["variant"] == "720x720_5s_fp8"
    # ComfyUI's own cast-per-call layers hold the matrices: fp8 as stored after sampling, every one of them.
    assert all(cls.startswith("comfy.ops.") for cls in fp8["layer_classes"]), fp8["layer_classes"]
    assert fp8["cast_layer_weight_dtypes"] == ["float8_e4m3fn"]
    assert set(fp8["tensors_by_dtype"]) == {"float8_e4m3fn", "bfloat16"}
    assert fp8["tensors_by_dtype"]["float8_e4m3fn"] == fp8["cast_layer_count"]
    # Never in fp8: the layers cast the weights per call to the compute dtype (fp32 on a CPU in ComfyUI today).
    assert fp8["compute_dtype"] in ("float32", "bfloat16") and fp8["devices"] == ["cpu"]
    # dtype bf16 upcasts the same tensors at load: the fp8 model holds its matrices in half the bytes.
    assert bf16["cast_layer_weight_dtypes"] == ["bfloat16"] and set(bf16["tensors_by_dtype"]) == {"bfloat16"}
    matrix_bytes_fp8 = fp8["bytes_by_dtype"]["float8_e4m3fn"]
    assert sum(bf16["bytes_by_dtype"].values()) == 2 * matrix_bytes_fp8 + fp8["bytes_by_dtype"]["bfloat16"]
    assert fp8["patcher_model_size_bytes"] < 0.6 * bf16["patcher_model_size_bytes"]


def test_fp8_frames_match_the_bf16_upcast_of_the_same_weights(comfy_server, fp8_run, bf16_run):
    fp8, bf16 = frames_of(comfy_server, fp8_run).astype(np.int16), frames_of(comfy_server, bf16_run).astype(np.int16)
    assert fp8.shape == bf16.shape == (FRAMES, MADE_PX, MADE_PX, 3)
    difference = np.abs(fp8 - bf16)
    print(f"\nfp8 auto vs bf16 frames: max |diff| {difference.max()} / 255, mean {difference.mean():.4f}; "
          f"frame std {fp8.std():.1f}")
    # float8_e4m3fn values are exact in bf16, so both models hold the same numbers; only the compute path may
    # round differently (within a level or two of 255). Measured on a CPU: no difference at all.
    assert difference.max() <= 2 and difference.mean() < 0.05
    assert fp8.std() > 2.0


def test_preset_with_its_joint_model_missing_fails_naming_the_file(comfy_server, ovi_models):
    entry = run_timed(comfy_server, "missing model.safetensors (error)",
                      ovi_graph("Ovi 720x720 5s", "auto", "ovi_missing"), check=False)
    error = comfy_server.execution_error(entry)
    assert (error["node_id"], error["node_type"], error["exception_type"]) == \
        ("1", "SyncAVLoader", "FileNotFoundError")
    message = error["exception_message"]
    assert ("Ovi 720x720 5s: joint model file 'model.safetensors' not found in models/diffusion_models "
            "(also accepted: ovi_720x720_5s.safetensors); searched ") in message
    assert str(ovi_models / "diffusion_models") in message
    assert not comfy_server.output_files(entry)


def test_without_the_text_encoder_file_the_first_prompt_fails_naming_it(comfy_server, ovi_models):
    """The Loader's own text encoder looks for its file at the first encode: without it SyncAV Text Encode fails,
    naming the file and its folder. (dtype fp32: Loader inputs no other test uses, so ComfyUI runs the Loader again
    rather than reusing an output whose text encoder another prompt has loaded.)"""
    weights = ovi_models / "text_encoders" / TEXT_ENCODER.name
    away = weights.with_name("moved_away.bin")
    weights.rename(away)
    try:
        entry = run_timed(comfy_server, "missing umt5_xxl_fp16.safetensors (error)",
                          ovi_graph(FP8_FILE, "fp32", "ovi_no_text_encoder", save_video=False), check=False)
    finally:
        away.rename(weights)
    error = comfy_server.execution_error(entry)
    assert (error["node_id"], error["node_type"], error["exception_type"]) == \
        ("2", "SyncAVTextEncode", "FileNotFoundError")
    message = error["exception_message"]
    assert ("Ovi text encoder: text encoder (UMT5-XXL) file 'umt5_xxl_fp16.safetensors' not found in "
            "models/text_encoders") in message
    assert str(ovi_models / "text_encoders") in message
    assert not comfy_server.output_files(entry)
