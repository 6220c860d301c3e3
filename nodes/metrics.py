"""SyncAV Sync Metric (scores how well a clip's sound lines up with its picture) and SyncAV BounceBench Clip (a
benchmark clip with its ground truth), so graphs can build evaluation pipelines. The work is in bouncebench/ and
metrics/.

The stock frontend shows text only on its Preview Any node: wire the report output into one (the shipped
sync-eval workflow does). The report also goes to the node's UI output, which API clients read from /history.
"""

from __future__ import annotations

import json

from comfy_api.latest import io, ui

from ..bouncebench.clips import make_clip
from ..bouncebench.config import SPLITS, VARIANTS, clip_seed
from ..bouncebench.evaluation import batch_sync_report
from ..metrics.motion import VISUAL_EVENT_MODES
from . import comfy_types


class SyncAVSyncMetric(io.ComfyNode):
    """Scores audio-video sync of a clip: event F1, median offset, AV-Align, cross-correlation offset."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SyncAVSyncMetric", display_name="SyncAV Sync Metric", category=comfy_types.CATEGORY,
            description="Measures how well the sound lines up with the picture: visual events (impacts or motion "
                        "peaks) matched to audio onsets (event F1, median offset), AV-Align, and the global offset "
                        "from cross-correlation. Wire the report into Preview Any to read it in the editor.",
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="The frames [F, H, W, 3] (several clips of equal length one after "
                                                 "another, as SyncAV Decode gives them, are scored clip by clip)."),
                io.Audio.Input("audio", tooltip="The soundtrack: one track per clip."),
                io.Float.Input("fps", default=16.0, min=0.1, max=1000.0, step=0.01,
                               tooltip="Frames per second of the images."),
                io.Float.Input("tolerance_ms", default=62.5, min=0.0, max=1000.0, step=0.5,
                               tooltip="Window within which a sound matches a visual event, in ms. 0 = one frame "
                                       "(1000 / fps)."),
                io.Combo.Input("mode", options=list(VISUAL_EVENT_MODES), default="auto",
                               tooltip="Visual events: blobs (impacts of coloured objects on a plain background), "
                                       "motion (motion-energy peaks, any video), auto (blobs when found, else "
                                       "motion)."),
            ],
            outputs=[
                comfy_types.output(io.String, "report", "Every sync metric as JSON (event_f1/precision/recall, "
                                    "median_offset_ms, av_align, xcorr_offset_ms (positive = audio late), "
                                    "xcorr_confidence, event counts; null where undefined)."),
                comfy_types.output(io.Float, "event_f1", "Event F1 (0..1). Read it against a chance baseline: "
                                                          "unrelated clips already score about 0.3."),
            ])

    @classmethod
    def execute(cls, images, audio, fps: float = 16.0, tolerance_ms: float = 62.5, mode: str = "auto"
                ) -> io.NodeOutput:
        frames = comfy_types.check_images(images)
        waveform, rate = comfy_types.check_audio(audio)
        tolerance_s = None if tolerance_ms == 0 else tolerance_ms / 1000.0
        report = batch_sync_report(frames, waveform, float(fps), rate, tolerance_s, mode=mode)
        text = json.dumps(report, indent=2, allow_nan=False)
        f1 = float(report["event_f1"]) if report["event_f1"] is not None else 0.0
        return io.NodeOutput(text, f1, ui=ui.PreviewText(text))


class SyncAVBounceBench(io.ComfyNode):
    """One BounceBench clip (bouncing balls whose every impact sound has a known time) with its ground truth."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SyncAVBounceBench", display_name="SyncAV BounceBench Clip", category=comfy_types.CATEGORY,
            description="A BounceBench clip: coloured balls bouncing in a box, with a sound at the exact time of "
                        "every impact, its caption and ground truth. Bit-identical on every machine; for building "
                        "evaluation graphs (e.g. with SyncAV Sync Metric).",
            inputs=[
                io.Combo.Input("split", options=list(SPLITS), default="val",
                               tooltip="train (training data), val (choosing checkpoints), test (reported "
                                       "numbers): disjoint seeds."),
                io.Int.Input("index", default=0, min=0, max=max(high - low for low, high in SPLITS.values()) - 1,
                             tooltip="Which clip of the split (the same index is the same clip on every machine). "
                                     "val and test hold 1,000,000 clips."),
                io.Combo.Input("variant", options=list(VARIANTS), default="standard",
                               tooltip="standard (one ball), or one knob changed: two_balls, three_balls, fast, "
                                       "small, large, noisy."),
            ],
            outputs=[
                comfy_types.output(io.Image, "images", "The frames [F, H, W, 3] in 0..1 (32 x 32 px, 2 s at 16 fps "
                                                        "for the standard clip)."),
                comfy_types.output(io.Audio, "audio", "The soundtrack (8 kHz mono): a tone at every impact."),
                comfy_types.output(io.String, "caption", "The caption, e.g. 'a red ball bouncing, high clicks' "
                                                          "(colour and sound, never the timing)."),
                comfy_types.output(io.Float, "fps", "Frames per second."),
                comfy_types.output(io.String, "ground_truth", "Ground truth as JSON: seed, impacts (time_s, ball, "
                                    "surface, speed_px_per_s), balls, per-frame centres."),
            ])

    @classmethod
    def execute(cls, split: str, index: int, variant: str) -> io.NodeOutput:
        clip = make_clip(clip_seed(split, index), VARIANTS[variant])
        images = clip.frames.float().contiguous()                              # [F, H, W, 3]
        audio = {"waveform": clip.waveform.float()[None].contiguous(), "sample_rate": int(clip.sample_rate_hz)}
        return io.NodeOutput(images, audio, clip.caption, float(clip.fps), json.dumps(clip.ground_truth()))
