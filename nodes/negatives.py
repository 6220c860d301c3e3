"""SyncAV Temporal Negative Builder: which broken-timing losers the DPO trainer trains against, with a preview.

The spec is a curriculum narrowed by the node's inputs (negatives/curriculum_choice.py); the preview draws one negative
the way the trainer does at a chosen point of training (negatives/preview.py) on a clip of the dataset or of
BounceBench (data/preview_source.py), decodes it and shows it as frames + audio. This module only marshals.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..data.preview_source import preview_latents
from ..generation.generate import MAX_SEED, latents_to_clip
from ..negatives.curriculum import DEFAULT_CURRICULUM, MODES
from ..negatives.curriculum_choice import ALL_RULES, choose_curriculum
from ..negatives.preview import preview_negative
from ..negatives.rules import FAMILIES, RULES
from . import comfy_types


class SyncAVNegatives(io.ComfyNode):
    """Chooses the temporal negatives (rules, curriculum) for DPO, and previews one of them."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SyncAVNegatives", display_name="SyncAV Temporal Negative Builder", category=comfy_types.CATEGORY,
            description="Sets which temporal negatives the DPO trainer pairs each real clip with (audio shifted, "
                        "reversed, re-timed, shuffled, swapped, muted; video frozen or reversed) and their "
                        "coarse-to-subtle curriculum, and renders one negative as frames + audio so you can watch it.",
            inputs=[
                io.String.Input("rules", default=ALL_RULES, multiline=False,
                                tooltip=f"{ALL_RULES!r}: every rule of the curriculum. Or comma-separated rule names "
                                        f"to keep only those (magnitudes from the curriculum): {', '.join(RULES)}."),
                io.String.Input("curriculum_json", default=DEFAULT_CURRICULUM.to_json(), multiline=True,
                                tooltip="Stages from coarse to subtle: each runs until a fraction of training "
                                        "('until'), replays a share of earlier stages ('replay') and draws weighted "
                                        "rules with magnitudes in seconds, a ratio or a count (see the README)."),
                io.Combo.Input("curriculum_mode", options=list(MODES), default="staged",
                               tooltip="staged: the stages in turn (coarse to subtle). none: every rule of every "
                                       "stage mixed from the first step (ablation)."),
                io.String.Input("families", default="", multiline=False,
                                tooltip=f"Keep only these rule families (ablation), comma-separated among "
                                        f"{', '.join(FAMILIES)}. Empty: all."),
                comfy_types.CODECS.Input("codecs", tooltip="The codecs from SyncAV Loader (the preview is encoded, "
                                                            "distorted and decoded the way the trainer sees it)."),
                io.Int.Input("preview_index", default=0, min=0, max=1_000_000,
                             tooltip="Which clip to preview: of the dataset, or of BounceBench's train split when "
                                     "no dataset is connected."),
                io.Float.Input("preview_progress", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Point of training to preview (0 = start, 1 = end): picks the curriculum "
                                       "stage the negative is drawn from."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED,
                             tooltip="Seed of the preview's draw (rule, magnitude, position)."),
                comfy_types.DATASET.Input("dataset", optional=True,
                                           tooltip="Preview on a clip of this dataset (else a BounceBench clip)."),
            ],
            outputs=[
                comfy_types.output(comfy_types.NEGATIVES, "negatives", "The negatives spec for SyncAV DPO Trainer."),
                comfy_types.output(io.Image, "preview_images", "The previewed negative's frames [F, H, W, 3] "
                                    "(decoded from the distorted latents, as the trainer sees it)."),
                comfy_types.output(io.Audio, "preview_audio", "The previewed negative's soundtrack."),
                comfy_types.output(io.String, "preview_rule", "The rule and magnitude of the previewed negative, its "
                                    "curriculum stage and the clip."),
                comfy_types.output(io.Float, "fps", "Frames per second of the preview (for Create Video)."),
            ])

    @classmethod
    def execute(cls, rules: str, curriculum_json: str, curriculum_mode: str, families: str, codecs,
                preview_index: int, preview_progress: float, seed: int, dataset=None) -> io.NodeOutput:
        spec = comfy_types.SyncAVNegativeSpec(*choose_curriculum(rules, curriculum_json, curriculum_mode, families))
        video, audio, clip_name = preview_latents(codecs, dataset, preview_index)
        preview = preview_negative(spec.curriculum, codecs.video_codec, codecs.audio_codec, video, audio,
                                   preview_progress, seed)
        clip = latents_to_clip(codecs.pipeline, preview.negatives.video[:1], preview.negatives.audio[:1])
        preview_audio = {"waveform": clip.waveform.contiguous(), "sample_rate": int(clip.sample_rate_hz)}
        return io.NodeOutput(spec, clip.frames[0].contiguous(), preview_audio,
                             f"{preview.words} | clip: {clip_name}", float(clip.fps))
