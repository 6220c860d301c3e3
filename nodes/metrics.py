"""SyncAV Sync Metric (scores how well a clip's sound lines up with its picture) and SyncAV BounceBench Clip (a
benchmark clip with its ground truth), so graphs can build evaluation pipelines. The work is in train/."""

from __future__ import annotations

import json

import torch

from ..bouncebench.clips import SPLITS, VARIANTS, make_clip, split_seeds
from ..bouncebench.evaluation import batch_sync_report

METRIC_MODES = ["auto", "blobs", "motion"]


def check_images(images, name: str = "images") -> torch.Tensor:
    """An IMAGE ``[F, H, W, 3]`` (frames in 0..1); a ValueError naming the input otherwise."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name}: expected IMAGE frames (a tensor [F, H, W, 3] in 0..1), received "
                         f"{type(images).__name__}")
    if images.dim() != 4 or images.shape[-1] != 3 or min(images.shape) < 1:
        raise ValueError(f"{name}: expected IMAGE frames [F, H, W, 3] (RGB in 0..1), received shape "
                         f"{list(images.shape)}")
    return images


def check_audio(audio, name: str = "audio") -> tuple[torch.Tensor, int]:
    """An AUDIO dict ``{"waveform": [B, C, T], "sample_rate": int}`` -> (waveform, sample rate in Hz)."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        got = sorted(audio) if isinstance(audio, dict) else type(audio).__name__
        raise ValueError(f"{name}: expected AUDIO (a dict with 'waveform' [B, C, T] and 'sample_rate' in Hz), "
                         f"received {got}")
    waveform, rate = audio["waveform"], audio["sample_rate"]
    if not isinstance(waveform, torch.Tensor) or waveform.dim() != 3 or waveform.shape[-1] < 1:
        what = list(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
        raise ValueError(f"{name}: 'waveform' must be a tensor [B, C, T] (clips, channels, samples), received {what}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise ValueError(f"{name}: 'sample_rate' must be a positive number of Hz, received {rate!r}")
    return waveform, int(rate)


class SyncAVSyncMetric:
    """Scores audio-video sync of a clip: event F1, median offset, AV-Align, cross-correlation offset."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The frames [F, H, W, 3] (several clips of equal length one after "
                                            "another, as SyncAV Decode gives them, are scored clip by clip)."}),
            "audio": ("AUDIO", {"tooltip": "The soundtrack: one track per clip."}),
            "fps": ("FLOAT", {"default": 16.0, "min": 0.1, "max": 1000.0, "step": 0.01,
                              "tooltip": "Frames per second of the images."}),
            "tolerance_ms": ("FLOAT", {"default": 62.5, "min": 0.0, "max": 1000.0, "step": 0.5,
                                       "tooltip": "Window within which a sound matches a visual event, in ms. "
                                                  "0 = one frame (1000 / fps)."}),
            "mode": (METRIC_MODES, {"default": "auto",
                                    "tooltip": "Visual events: blobs (impacts of coloured objects on a plain "
                                               "background), motion (motion-energy peaks, any video), auto "
                                               "(blobs when found, else motion)."}),
        }}

    RETURN_TYPES = ("STRING", "FLOAT")
    RETURN_NAMES = ("report", "event_f1")
    OUTPUT_TOOLTIPS = (
        "Every sync metric as JSON (event_f1/precision/recall, median_offset_ms, av_align, xcorr_offset_ms "
        "(positive = audio late), xcorr_confidence, event counts; null where undefined).",
        "Event F1 (0..1). Read it against a chance baseline: unrelated clips already score about 0.3.",
    )
    FUNCTION = "measure"
    OUTPUT_NODE = True
    CATEGORY = "SyncAV"
    DESCRIPTION = ("Measures how well the sound lines up with the picture: visual events (impacts or motion peaks) "
                   "matched to audio onsets (event F1, median offset), AV-Align, and the global offset from "
                   "cross-correlation. Shows the report on the node.")

    def measure(self, images, audio, fps: float, tolerance_ms: float, mode: str):
        images = check_images(images)
        waveform, rate = check_audio(audio)
        if not fps > 0:
            raise ValueError(f"fps: expected a positive frame rate, received {fps!r}")
        if not tolerance_ms >= 0:
            raise ValueError(f"tolerance_ms: expected >= 0 ms (0 = one frame), received {tolerance_ms!r}")
        if mode not in METRIC_MODES:
            raise ValueError(f"mode: expected one of {', '.join(METRIC_MODES)}, received {mode!r}")
        if images.shape[0] % waveform.shape[0]:
            raise ValueError(f"images / audio: {images.shape[0]} frames do not split into {waveform.shape[0]} clips "
                             "(audio has one track per clip; every clip needs the same number of frames)")
        tolerance_s = None if tolerance_ms == 0 else tolerance_ms / 1000.0
        report = batch_sync_report(images, waveform, float(fps), rate, tolerance_s, mode=mode)
        text = json.dumps(report, indent=2, allow_nan=False)
        f1 = float(report["event_f1"]) if report["event_f1"] is not None else 0.0
        return {"ui": {"text": [text]}, "result": (text, f1)}


class SyncAVBounceBench:
    """One BounceBench clip (bouncing balls whose every impact sound has a known time) with its ground truth."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "split": (list(SPLITS), {"default": "val",
                                     "tooltip": "train (training data), val (choosing checkpoints), test "
                                                "(reported numbers): disjoint seeds."}),
            "index": ("INT", {"default": 0, "min": 0, "max": max(high - low for low, high in SPLITS.values()) - 1,
                              "tooltip": "Which clip of the split (the same index is the same clip on every "
                                         "machine). val and test hold 1,000,000 clips."}),
            "variant": (list(VARIANTS), {"default": "standard",
                                         "tooltip": "standard (one ball), or one knob changed: two_balls, "
                                                    "three_balls, fast, small, large, noisy."}),
        }}

    RETURN_TYPES = ("IMAGE", "AUDIO", "STRING", "FLOAT", "STRING")
    RETURN_NAMES = ("images", "audio", "caption", "fps", "ground_truth")
    OUTPUT_TOOLTIPS = (
        "The frames [F, H, W, 3] in 0..1 (32 x 32 px, 2 s at 16 fps for the standard clip).",
        "The soundtrack (8 kHz mono): a tone at every impact.",
        "The caption, e.g. 'a red ball bouncing, high clicks' (colour and sound, never the timing).",
        "Frames per second.",
        "Ground truth as JSON: seed, impacts (time_s, ball, surface, speed_px_per_s), balls, per-frame centres.",
    )
    FUNCTION = "make"
    CATEGORY = "SyncAV"
    DESCRIPTION = ("A BounceBench clip: coloured balls bouncing in a box, with a sound at the exact time of every "
                   "impact, its caption and ground truth. Bit-identical on every machine; for building evaluation "
                   "graphs (e.g. with SyncAV Sync Metric).")

    def make(self, split: str, index: int, variant: str):
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {', '.join(SPLITS)}, received {split!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, received {variant!r}")
        size = SPLITS[split][1] - SPLITS[split][0]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
            raise ValueError(f"index: expected 0..{size - 1} for the {split} split, received {index!r}")
        clip = make_clip(split_seeds(split, 1, start=index)[0], VARIANTS[variant])
        images = clip.frames.float().contiguous()                              # [F, H, W, 3]
        audio = {"waveform": clip.waveform.float()[None].contiguous(), "sample_rate": int(clip.sample_rate_hz)}
        return (images, audio, clip.caption, float(clip.fps), json.dumps(clip.ground_truth()))
