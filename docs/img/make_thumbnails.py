"""Template-browser pictures of the shipped workflows (example_workflows/NAME.jpg) and the package icon
(docs/img/icon.png).

A card shows what its workflow makes, not its graph. The CPU workflows are run here through the library with the
settings their API files hold (prompt, seed, steps, solver, guidance scales, BounceBench clips, curriculum, DPO
steps; the guider workflow's SamplerCustomAdvanced with euler and SyncAV Sigmas / Noise as the SyncCFG Sampler's
euler solver, which makes the same clip), and drawn as frames taken across each clip (32 px frames, upscaled
without smoothing) above the clip's waveform, with a label. The Ovi workflow cannot run on a CPU: its card says
what it needs. ComfyUI's template browser asks for NAME.jpg beside NAME.json and shows it in a square card (400x400
px is the size ComfyUI's docs recommend). From the repository root (about a minute on a CPU, most of it the DPO
workflow's training):

    python docs/img/make_thumbnails.py
    python docs/img/make_thumbnails.py --only generate eval     # some of: generate eval negatives dpo ovi guider icon

Check each result by eye.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = REPO_ROOT / "example_workflows"
ICON_PATH = REPO_ROOT / "docs" / "img" / "icon.png"
CARD_PX = 400
ICON_PX = 256
JPEG_QUALITY = 90
BACKGROUND = (24, 26, 31)
TEXT = (236, 238, 242)
MUTED = (160, 166, 178)
ACCENT = (255, 184, 64)          # waveforms and highlights
GAP_PX = 4

# Card name -> workflow file stem (the card titles of the template browser).
WORKFLOWS = {
    "generate": "SyncAV - generate a clip with sound (CPU)",
    "eval": "SyncAV - sync eval, SyncCFG vs plain CFG (CPU)",
    "negatives": "SyncAV - preview a temporal negative (CPU)",
    "dpo": "SyncAV - DPO sync training, then generate (CPU)",
    "ovi": "SyncAV - Ovi video with speech (GPU only)",
    "guider": "SyncAV - SyncCFG guider, ComfyUI samplers (CPU)",
}


# ------------------------------------------------------------------------------------------------ workflow inputs

def api_nodes(card: str) -> dict:
    return json.loads((WORKFLOWS_DIR / "api" / f"{WORKFLOWS[card]}.json").read_text())


def inputs_of(nodes: dict, class_type: str, index: int = 0) -> dict:
    """The widget inputs (not links) of the ``index``-th node of ``class_type`` in id order."""
    found = [nodes[k] for k in sorted(nodes, key=int) if nodes[k]["class_type"] == class_type]
    return {name: value for name, value in found[index]["inputs"].items() if not isinstance(value, list)}


def guidance_of(sampler: dict):
    from comfyui_syncav.guidance.sync_cfg import DEFAULT_ANCHORS, SyncCFGGuidance

    return SyncCFGGuidance(text_scale_video=sampler["text_scale_video"], text_scale_audio=sampler["text_scale_audio"],
                           sync_scale_video=sampler["sync_scale_video"], sync_scale_audio=sampler["sync_scale_audio"],
                           sync_interval=(sampler["sync_start"], sampler["sync_end"]),
                           anchors=sampler.get("anchors", DEFAULT_ANCHORS.value))


def generate(pipeline, prompt: str, sampler: dict, latent: dict, seed: int):
    """One clip as the SyncCFG Sampler node makes it -> (frames [F, H, W, 3], waveform [C, T], fps, rate)."""
    from comfyui_syncav.generation.generate import generate_clip

    clip = generate_clip(pipeline, prompt, seconds=latent["seconds"], height_px=latent["height"],
                         width_px=latent["width"], seed=seed, steps=sampler["steps"], solver=sampler["solver"],
                         shift=sampler["shift"], guidance=guidance_of(sampler))
    return clip.frames[0], clip.waveform[0], clip.fps, clip.sample_rate_hz


def mean_event_f1(clips: list[tuple]) -> str:
    """Event F1 over clips ``(frames, waveform, fps, rate)`` as the Sync Metric node reports it: "mean ± SE"."""
    from comfyui_syncav.bouncebench.sync_summary import clip_set_report

    report = clip_set_report(clips)
    return f"{report['event_f1']:.2f}" + (f" ± {report['event_f1_se']:.2f}" if len(clips) > 1 else "")


# ------------------------------------------------------------------------------------------------ drawing

def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)      # Pillow's own font: the same on every machine


def frames_at(frames: torch.Tensor, count: int) -> list[np.ndarray]:
    """``count`` frames [H, W, 3] uint8 spread evenly over the clip [F, H, W, 3] (0..1), first and last included."""
    picks = np.linspace(0, frames.shape[0] - 1, count).round().astype(int)
    return [(frames[i].clamp(0, 1).numpy() * 255).round().astype(np.uint8) for i in picks]


def paste_frame(card: Image.Image, frame: np.ndarray, left: int, top: int, size_px: int) -> None:
    card.paste(Image.fromarray(frame).resize((size_px, size_px), Image.NEAREST), (left, top))


def draw_waveform(draw: ImageDraw.ImageDraw, waveform: torch.Tensor, box: tuple[int, int, int, int]) -> None:
    """The waveform [C, T] (-1..1) as a min/max envelope per pixel column in ``box`` (left, top, right, bottom),
    scaled to its own peak so quiet clips stay visible."""
    left, top, right, bottom = box
    draw.rectangle(box, fill=(34, 37, 44))
    samples = waveform.float().mean(dim=0).numpy()
    columns = np.array_split(samples, right - left)
    peak = max(float(np.abs(samples).max()), 1e-6)
    middle, half = (top + bottom) / 2, (bottom - top) / 2 - 1
    for x, column in enumerate(columns):
        if column.size:
            low, high = column.min() / peak, column.max() / peak
            draw.line([(left + x, middle - high * half), (left + x, middle - low * half)], fill=ACCENT)


def clip_row(card: Image.Image, frames, waveform, top: int, count: int, size_px: int, wave_px: int,
             label: str, note: str = "") -> int:
    """A labelled row: ``count`` frames across the clip, its waveform beneath; returns the row's bottom."""
    draw = ImageDraw.Draw(card)
    width = count * size_px + (count - 1) * GAP_PX
    left = (CARD_PX - width) // 2
    draw.text((left, top), label, font=font(15), fill=TEXT)
    if note:
        draw.text((left + width, top), note, font=font(15), fill=ACCENT, anchor="ra")
    top += 20
    for k, frame in enumerate(frames_at(frames, count)):
        paste_frame(card, frame, left + k * (size_px + GAP_PX), top, size_px)
    top += size_px + 3
    draw_waveform(draw, waveform, (left, top, left + width, top + wave_px))
    return top + wave_px


def new_card(title: str) -> tuple[Image.Image, int]:
    card = Image.new("RGB", (CARD_PX, CARD_PX), BACKGROUND)
    ImageDraw.Draw(card).text((CARD_PX // 2, 12), title, font=font(22), fill=TEXT, anchor="ma")
    return card, 44


def caption(card: Image.Image, text: str, top: int, size: int = 14, colour=MUTED) -> None:
    ImageDraw.Draw(card).text((CARD_PX // 2, top), text, font=font(size), fill=colour, anchor="ma")


# ------------------------------------------------------------------------------------------------ the cards

def card_generate(pipeline) -> Image.Image:
    nodes = api_nodes("generate")
    sampler, latent = inputs_of(nodes, "SyncAVSampler"), inputs_of(nodes, "SyncAVEmptyLatent")
    prompt = inputs_of(nodes, "SyncAVTextEncode")["video_prompt"]
    frames, waveform, _, _ = generate(pipeline, prompt, sampler, latent, sampler["seed"])
    card, top = new_card("Text to a clip with its sound")
    size_px = 92
    grid = 3 * size_px + 2 * GAP_PX
    left = (CARD_PX - grid) // 2
    for k, frame in enumerate(frames_at(frames, 9)):          # 3x3, row by row through the clip
        paste_frame(card, frame, left + k % 3 * (size_px + GAP_PX), top + k // 3 * (size_px + GAP_PX), size_px)
    top += grid + 6
    draw_waveform(ImageDraw.Draw(card), waveform, (left, top, left + grid, top + 34))
    caption(card, f"\"{prompt}\"", top + 42)
    return card


def card_eval(pipeline) -> Image.Image:
    """The first clip of each branch (real, plain CFG, SyncCFG) with the event F1 over all the workflow's clips, each
    sampled with its BounceBench seed as the workflow wires it."""
    from comfyui_syncav.bouncebench.clips import make_clips
    from comfyui_syncav.bouncebench.config import VARIANTS, clip_seeds

    nodes = api_nodes("eval")
    bench = inputs_of(nodes, "SyncAVBounceBench")
    latent = inputs_of(nodes, "SyncAVEmptyLatent")
    reals = make_clips(clip_seeds(bench["split"], bench["index"], bench["count"]), VARIANTS[bench["variant"]])
    rows = [("BounceBench clips (real)", [(r.frames, r.waveform, r.fps, r.sample_rate_hz) for r in reals])]
    for index, label in ((0, "plain text CFG"), (1, "SyncCFG")):
        sampler = inputs_of(nodes, "SyncAVSampler", index)
        clips = [generate(pipeline, real.caption, sampler, latent, real.seed) for real in reals]
        rows.append((f"{label} (sync {sampler['sync_scale_video']:g})", clips))
    card, top = new_card("Sync check: SyncCFG vs plain CFG")
    for label, clips in rows:
        frames, waveform, _, _ = clips[0]
        top = clip_row(card, frames, waveform, top, 5, 54, 18, label, f"F1 {mean_event_f1(clips)}") + 10
    caption(card, f"first of {len(reals)} clips; event F1: mean ± SE over all {len(reals)}", top)
    return card


def card_negatives(pipeline) -> Image.Image:
    from comfyui_syncav.bouncebench.clips import make_batch
    from comfyui_syncav.bouncebench.config import STANDARD, split_seeds
    from comfyui_syncav.negatives.curriculum import Curriculum
    from comfyui_syncav.negatives.magnitudes import magnitude_words
    from comfyui_syncav.negatives.preview import preview_negative
    from comfyui_syncav.negatives.rules import RULES

    nodes = api_nodes("negatives")
    spec = inputs_of(nodes, "SyncAVNegatives")
    index = inputs_of(nodes, "PrimitiveInt")["value"]
    curriculum = Curriculum.from_json(spec["curriculum_json"]).with_mode(spec["curriculum_mode"])
    frames, waveform, _ = make_batch(split_seeds("train", 2, start=index), STANDARD)   # the next clip: a swap donor
    vc, ac = pipeline.video_codec, pipeline.audio_codec
    with torch.no_grad():
        video, audio = vc.encode(frames.float()), ac.encode(waveform.float())
        preview = preview_negative(curriculum, vc, ac, video, audio, spec["preview_progress"], spec["seed"])
        negative_frames, negative_wave = pipeline.decode(preview.negatives.video[:1], preview.negatives.audio[:1])
    card, top = new_card("A temporal negative for DPO")
    top = clip_row(card, frames[0], waveform[0], top, 4, 78, 26, "real clip (the winner)") + 12
    top = clip_row(card, negative_frames[0], negative_wave[0], top, 4, 78, 26, "its negative (the loser)",
                   preview.rule) + 12
    caption(card, preview.rule + magnitude_words(RULES[preview.rule], preview.magnitude), top, colour=TEXT)
    caption(card, "from coarse to subtle as training goes on", top + 20)
    return card


def card_dpo(pipeline) -> Image.Image:
    from comfyui_syncav.negatives.curriculum import Curriculum
    from comfyui_syncav.runtime.lora import LoraSpec
    from comfyui_syncav.train.dpo_training import DPOTrainingConfig, train_dpo
    from comfyui_syncav.train.plot import render_curves

    nodes = api_nodes("dpo")
    trainer, spec = inputs_of(nodes, "SyncAVDPOTrainer"), inputs_of(nodes, "SyncAVNegatives")
    steps = trainer["steps"]
    config = DPOTrainingConfig(
        steps=steps, batch_size=trainer["batch_size"], lr=trainer["lr"],
        lora=LoraSpec(rank=trainer["rank"], alpha=float(trainer["rank"])),
        curriculum=Curriculum.from_json(spec["curriculum_json"]).with_mode(spec["curriculum_mode"]),
        save_every=trainer["save_every"], log_every=max(1, min(25, steps // 50)),
        warmup_steps=min(25, steps // 10), seed=trainer["seed"])
    with tempfile.TemporaryDirectory(prefix="syncav_thumbnail_") as run_dir:
        result = train_dpo(pipeline, run_dir, config, resume=False, progress=True)
    sampler, latent = inputs_of(nodes, "SyncAVSampler"), inputs_of(nodes, "SyncAVEmptyLatent")
    prompt = inputs_of(nodes, "SyncAVTextEncode")["video_prompt"]
    frames, waveform, _, _ = generate(pipeline, prompt, sampler, latent, sampler["seed"])
    card, top = new_card(f"DPO for sync: {steps} LoRA steps")
    # The loss panel of the trainer's curves output, drawn at the card's width so its text keeps its size.
    losses = {name: [(h["step"], h[name]) for h in result.state.history if h.get(name) is not None]
              for name in ("loss", "video_dpo", "audio_dpo")}
    curves = render_curves(losses, width_px=CARD_PX - 24, height_px=190)
    card.paste(Image.fromarray(curves), (12, top))
    top += curves.shape[0] + 10
    clip_row(card, frames, waveform, top, 5, 60, 20, "then a clip made with the LoRA")
    return card


def guider_as_sampler(nodes: dict) -> dict:
    """The guider workflow's settings as the SyncCFG Sampler's inputs that make its clip: SamplerCustomAdvanced with
    euler, SyncAV Sigmas and SyncAV Noise equals the SyncCFG Sampler's euler solver at the same steps, shift, seed
    and scales (tests/integration/test_guider.py) when sync guidance covers every sigma."""
    guider = inputs_of(nodes, "SyncAVSyncCFGGuider")
    sampler_name = inputs_of(nodes, "KSamplerSelect")["sampler_name"]
    if sampler_name != "euler" or (guider["sync_sigma_min"], guider["sync_sigma_max"]) != (0.0, 1.0):
        raise ValueError(f"the guider card draws euler with sync guidance on every sigma, the workflow has "
                         f"{sampler_name!r} and sync sigmas {guider['sync_sigma_min']}..{guider['sync_sigma_max']}")
    return {**guider, **inputs_of(nodes, "SyncAVSigmas"), "seed": inputs_of(nodes, "SyncAVNoise")["noise_seed"],
            "solver": "euler", "sync_start": 0.0, "sync_end": 1.0}


def draw_box(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], text: str, colour=TEXT) -> None:
    draw.rounded_rectangle(box, radius=6, fill=(44, 48, 58), outline=(90, 96, 110))
    draw.text(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2), text, font=font(14), fill=colour, anchor="mm")


def card_guider(pipeline) -> Image.Image:
    nodes = api_nodes("guider")
    sampler, latent = guider_as_sampler(nodes), inputs_of(nodes, "SyncAVEmptyLatent")
    prompt = inputs_of(nodes, "SyncAVTextEncode")["video_prompt"]
    frames, waveform, _, _ = generate(pipeline, prompt, sampler, latent, sampler["seed"])
    card, top = new_card("SyncCFG guider, any sampler")
    draw = ImageDraw.Draw(card)
    # The graph's middle: four sockets of SamplerCustomAdvanced and what feeds them.
    feeds = ["SyncAV Noise", "SyncCFG Guider", f"KSamplerSelect: {inputs_of(nodes, 'KSamplerSelect')['sampler_name']}",
             f"SyncAV Sigmas: {sampler['steps']} steps"]
    row_px, box_px = 30, 24
    target = (216, top + row_px - 4, 392, top + 3 * row_px)         # SamplerCustomAdvanced, its sockets on the left
    for k, text in enumerate(feeds):
        y = top + k * row_px
        draw_box(draw, (8, y, 184, y + box_px), text, ACCENT if k == 1 else TEXT)
        socket_y = target[1] + 8 + k * (target[3] - target[1] - 16) // 3
        draw.line([(184, y + box_px // 2), (target[0], socket_y)], fill=MUTED, width=2)
    draw_box(draw, target, "SamplerCustomAdvanced")
    top += 4 * row_px + 10
    top = clip_row(card, frames, waveform, top, 5, 75, 40, "the clip it makes", "each step: one batch") + 10
    caption(card, f"\"{prompt}\"", top)
    caption(card, "euler + SyncAV Sigmas/Noise = the SyncCFG Sampler", top + 20)
    return card


def card_ovi() -> Image.Image:
    card, top = new_card("Ovi: video with speech + sound")
    draw = ImageDraw.Draw(card)
    draw.rounded_rectangle((110, top + 6, 290, top + 56), radius=12, fill=(196, 52, 52))
    draw.text((CARD_PX // 2, top + 31), "GPU only", font=font(30), fill=TEXT, anchor="mm")
    lines = [("720x720, 5 s at 24 fps, 16 kHz sound", TEXT),
             ("Ovi's 11.7 B joint model:", TEXT),
             ("23.3 GB in bf16, ~12 GB in fp8", ACCENT),
             ("plus its files (ComfyUI offers them", MUTED),
             ("for download when the workflow opens):", MUTED),
             ("model.safetensors (Ovi)", TEXT),
             ("wan2.2_vae.safetensors", TEXT),
             ("MMAudio 16 kHz VAE + vocoder", TEXT),
             ("umt5_xxl_fp16.safetensors", TEXT)]
    y = top + 80
    for text, colour in lines:
        draw.text((CARD_PX // 2, y), text, font=font(18), fill=colour, anchor="ma")
        y += 30 if text.endswith(":") or colour == ACCENT else 26
    return card


def icon() -> Image.Image:
    """A ball bouncing above a soundtrack whose clicks fall on its bounces: picture and sound in sync."""
    scale = 4                                       # drawn large, then reduced: smooth edges
    size = ICON_PX * scale
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))          # transparent outside the rounded square
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 0, size - 1, size - 1), radius=48 * scale, fill=(32, 60, 96, 255))
    floor, bounces, apex = 150, (40, 128, 216), 40          # px of the 256 px icon
    for x0, x1 in zip(bounces, bounces[1:]):                # the ball's path: a parabola between bounces
        xs = np.linspace(x0, x1, 80)
        ys = floor - (floor - apex) * 4 * (xs - x0) * (x1 - xs) / (x1 - x0) ** 2
        draw.line([(x * scale, y * scale) for x, y in zip(xs, ys)], fill=(150, 190, 235), width=3 * scale)
    for x in bounces:                                       # each bounce lines up with its click
        draw.line([(x * scale, (floor + 12) * scale), (x * scale, 240 * scale)], fill=ACCENT, width=2 * scale)
    radius = 13
    draw.ellipse(((128 - radius) * scale, (floor - 2 * radius) * scale, (128 + radius) * scale, floor * scale),
                 fill=(230, 70, 60))
    draw.line([(20 * scale, floor * scale), (236 * scale, floor * scale)], fill=(200, 210, 225), width=3 * scale)
    xs = np.arange(20, 237)
    decay = sum(np.exp(-(xs - x) / 9.0) * (xs >= x) for x in bounces)
    wave = 20 * decay * np.sin(xs * 1.7)
    draw.line([(x * scale, (212 - w) * scale) for x, w in zip(xs, wave)], fill=ACCENT, width=2 * scale)
    return image.resize((ICON_PX, ICON_PX), Image.LANCZOS)


# ------------------------------------------------------------------------------------------------ main

def save_card(image: Image.Image, card: str) -> Path:
    path = WORKFLOWS_DIR / f"{WORKFLOWS[card]}.jpg"
    partial = path.with_name(path.name + ".partial")
    image.save(partial, format="JPEG", quality=JPEG_QUALITY)
    partial.replace(path)                   # never a half-written picture under the real name
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=[*WORKFLOWS, "icon"], default=[*WORKFLOWS, "icon"],
                        help="which pictures to make (default: all)")
    args = parser.parse_args(argv)
    from comfyui_syncav.generation.pipeline import build_embedded_default

    makers = {"generate": card_generate, "eval": card_eval, "negatives": card_negatives, "dpo": card_dpo,
              "guider": card_guider}
    for card in args.only:
        if card == "icon":
            icon().save(ICON_PATH)
            print(f"wrote {ICON_PATH.relative_to(REPO_ROOT)}")
            continue
        image = card_ovi() if card == "ovi" else makers[card](build_embedded_default())   # a fresh model each
        print(f"wrote {save_card(image, card).relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
