"""SyncAV Sync Metric (scores how well clips' sound lines up with their picture) and SyncAV BounceBench Clip
(benchmark clips with their ground truth), so graphs can build evaluation pipelines. The work is in bouncebench/ and
metrics/.

BounceBench Clip gives ``count`` clips as ComfyUI output lists, so the nodes it feeds (Text Encode, the sampler,
Decode) run once per clip; Sync Metric takes its inputs as whole lists (``is_input_list``) and scores every clip
together: means ± standard errors, chance and margin, and paired differences against another Sync Metric's report.
The stock frontend shows text only on its Preview Any node: wire the report output into one (the shipped
sync-eval workflow does). The report also goes to the node's UI output, which API clients read from /history.
"""

from __future__ import annotations

import json

from comfy_api.latest import io, ui

from ..bouncebench.clips import make_clips
from ..bouncebench.config import SPLITS, VARIANTS, clip_seeds
from ..bouncebench.sync_summary import clip_set_report, clips_of_batches
from ..metrics.motion import VISUAL_EVENT_MODES
from . import comfy_types


MAX_CLIPS = 1000         # BounceBench Clip's count: enough for a table, few enough to hold in memory


class SyncAVSyncMetric(io.ComfyNode):
    """Scores audio-video sync of clips: event F1, median offset, AV-Align, cross-correlation offset; over several
    clips their means ± standard errors, the chance baseline and the margin, and paired differences."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SyncAVSyncMetric", display_name="SyncAV Sync Metric", category=comfy_types.CATEGORY,
            description="Measures how well the sound lines up with the picture: visual events (impacts or motion "
                        "peaks) matched to audio onsets (event F1, median offset), AV-Align, and the global offset "
                        "from cross-correlation. Several clips (a list, e.g. from BounceBench Clip's count, or a "
                        "batch) are scored together: means ± standard errors, the chance F1 and the margin F1 - "
                        "chance; with compare_to, the differences to another run clip by clip. Wire the report "
                        "into Preview Any to read it in the editor.",
            is_output_node=True,
            is_input_list=True,      # every clip of the lists in one call: means, chance and pairs need them all
            inputs=[
                io.Image.Input("images", tooltip="The frames [F, H, W, 3], one clip per list item (several clips of "
                                                 "equal length one after another, as SyncAV Decode gives a batch, "
                                                 "are scored clip by clip)."),
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
                io.String.Input("compare_to", optional=True, force_input=True,
                                tooltip="Optional: the report of another Sync Metric on the same clips in the same "
                                        "order (e.g. plain CFG's): adds paired_difference, this run minus that "
                                        "one clip by clip (mean ± standard error of event F1, margin and median "
                                        "offset)."),
            ],
            outputs=[
                comfy_types.output(io.String, "report", "Every sync metric as JSON (event_f1/precision/recall, "
                                    "median_offset_ms, av_align, xcorr_offset_ms (positive = audio late), "
                                    "xcorr_confidence, event counts; null where undefined). Several clips: a summary, "
                                    "the means with <key>_se standard errors, chance_event_f1, event_f1_margin, "
                                    "per_clip, and paired_difference with compare_to."),
                comfy_types.output(io.Float, "event_f1", "Event F1 (0..1; the mean over clips). Read it against a "
                                                          "chance baseline: unrelated clips already score about "
                                                          "0.3."),
            ])

    @classmethod
    def execute(cls, images: list, audio: list, fps: list, tolerance_ms: list, mode: list,
                compare_to: list | None = None) -> io.NodeOutput:
        tracks = [comfy_types.check_audio(track) for track in audio]
        clips = clips_of_batches([comfy_types.check_images(frames) for frames in images],
                                 [waveform for waveform, _ in tracks], [float(rate) for rate in fps],
                                 [rate for _, rate in tracks])
        tolerance = comfy_types.one_value(tolerance_ms, "tolerance_ms")
        report = clip_set_report(clips, None if tolerance == 0 else tolerance / 1000.0,
                                 mode=comfy_types.one_value(mode, "mode"),
                                 compare_to=comfy_types.one_value(compare_to, "compare_to") if compare_to else None)
        text = json.dumps(report, indent=2, allow_nan=False, ensure_ascii=False)     # the summary's ±
        f1 = float(report["event_f1"]) if report["event_f1"] is not None else 0.0
        return io.NodeOutput(text, f1, ui=ui.PreviewText(text))


class SyncAVBounceBench(io.ComfyNode):
    """BounceBench clips (bouncing balls whose every impact sound has a known time) with their ground truth."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SyncAVBounceBench", display_name="SyncAV BounceBench Clip", category=comfy_types.CATEGORY,
            description="BounceBench clips: coloured balls bouncing in a box, with a sound at the exact time of "
                        "every impact, their captions and ground truth. Bit-identical on every machine; for "
                        "building evaluation graphs (e.g. with SyncAV Sync Metric). count > 1 gives lists, so the "
                        "nodes it feeds run once per clip.",
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
                io.Int.Input("count", default=1, min=1, max=MAX_CLIPS,
                             tooltip="How many clips: index, index + 1, ... Every output is a list of that many, so "
                                     "each node it feeds runs once per clip; Sync Metric scores them together "
                                     "(means ± standard errors)."),
            ],
            outputs=[
                comfy_types.output(io.Image, "images", "The frames [F, H, W, 3] in 0..1 of each clip (32 x 32 px, 2 s "
                                                        "at 16 fps for the standard clip).", is_list=True),
                comfy_types.output(io.Audio, "audio", "Each clip's soundtrack (8 kHz mono): a tone at every impact.",
                                   is_list=True),
                comfy_types.output(io.String, "caption", "Each clip's caption, e.g. 'a red ball bouncing, high "
                                                          "clicks' (colour and sound, never the timing).",
                                   is_list=True),
                comfy_types.output(io.Float, "fps", "Frames per second.", is_list=True),
                comfy_types.output(io.String, "ground_truth", "Each clip's ground truth as JSON: seed, impacts "
                                    "(time_s, ball, surface, speed_px_per_s), balls, per-frame centres.",
                                   is_list=True),
                comfy_types.output(io.Int, "seed", "Each clip's BounceBench seed: wire it into the sampler's seed so "
                                                    "every clip gets its own noise, the noise the eval command gives "
                                                    "that clip.", is_list=True),
            ])

    @classmethod
    def execute(cls, split: str, index: int, variant: str, count: int = 1) -> io.NodeOutput:
        seeds = clip_seeds(split, index, count)
        clips = make_clips(seeds, VARIANTS[variant])
        images = [clip.frames.float().contiguous() for clip in clips]                # each [F, H, W, 3]
        audio = [{"waveform": clip.waveform.float()[None].contiguous(), "sample_rate": int(clip.sample_rate_hz)}
                 for clip in clips]
        return io.NodeOutput(images, audio, [clip.caption for clip in clips], [float(clip.fps) for clip in clips],
                             [json.dumps(clip.ground_truth()) for clip in clips], seeds)
