"""SyncAV Temporal Negative Builder: which broken-timing losers the DPO trainer trains against, with a preview.

The spec is a curriculum (negatives/curriculum.py) narrowed by the node's inputs; the preview draws one negative the way
the trainer does at a chosen point of training (same curriculum stage, same latent-level rule), decodes it and shows
it as frames + audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..generation.generate import MAX_SEED
from ..data.av_dataset import AVClipDataset
from ..bouncebench.clips import STANDARD, make_batch, split_seeds
from ..negatives.curriculum import DEFAULT_CURRICULUM, MODES, Curriculum, CurriculumError
from ..negatives.rules import FAMILIES, RULES, TimeAxes, build_negatives
from .latent import check_codecs

CURRICULUM = "curriculum"
PREVIEW_STEPS = 1000          # the preview's progress is a step of a run this long


@dataclass(frozen=True)
class SyncAVNegativeSpec:
    """The SYNCAV_NEGATIVES value: the curriculum the trainer draws its losers from (mode, families and rule
    choice already applied)."""

    curriculum: Curriculum
    rules: tuple[str, ...] | None = None        # the rules the user kept (None: all of the curriculum's)

    def describe(self) -> str:
        stages = self.curriculum.effective_stages
        parts = []
        for stage in stages:
            names = ", ".join(dict.fromkeys(choice.rule for choice in stage.rules))
            parts.append(f"{stage.name or 'stage'} (until {stage.until:g}): {names}")
        return f"{self.curriculum.mode} curriculum; " + "; ".join(parts)


def check_negatives(negatives) -> SyncAVNegativeSpec:
    if not isinstance(negatives, SyncAVNegativeSpec):
        raise ValueError(f"negatives: expected the output of SyncAV Temporal Negative Builder, received "
                         f"{type(negatives).__name__}")
    return negatives


def parse_names(text, what: str, known) -> tuple[str, ...] | None:
    """``"a, b"`` -> ("a", "b"); ``""`` -> None. Unknown names: a ValueError naming the input."""
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected comma-separated names, received {type(text).__name__}")
    names = tuple(dict.fromkeys(piece.strip() for piece in text.split(",") if piece.strip()))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{what}: unknown {unknown}; expected comma-separated names among {', '.join(known)}, "
                         f"received {text!r}")
    return names or None


def keep_rules(curriculum: Curriculum, rules: tuple[str, ...]) -> Curriculum:
    """The curriculum with only the entries of ``rules`` (stages left empty dropped; the last runs to the end)."""
    spec = curriculum.to_dict()
    present = {entry["rule"] for stage in spec["stages"] for entry in stage["rules"]}
    missing = [rule for rule in rules if rule not in present]
    if missing:
        raise ValueError(f"rules: {missing} have no entry in curriculum_json (its rules: {', '.join(sorted(present))})"
                         f"; add an entry with a magnitude for them there")
    stages = [dict(stage, rules=[e for e in stage["rules"] if e["rule"] in rules]) for stage in spec["stages"]]
    stages = [stage for stage in stages if stage["rules"]]
    stages[-1]["until"] = 1.0
    return Curriculum.from_dict(dict(spec, stages=stages))


def build_spec(rules: str, curriculum_json: str, curriculum_mode: str, families: str) -> SyncAVNegativeSpec:
    if curriculum_mode not in MODES:
        raise ValueError(f"curriculum_mode: expected one of {', '.join(MODES)}, received {curriculum_mode!r}")
    if not isinstance(curriculum_json, str) or not curriculum_json.strip():
        raise ValueError("curriculum_json: expected a curriculum as JSON (see the default), received an empty text")
    try:
        curriculum = Curriculum.from_json(curriculum_json)
    except CurriculumError as error:
        raise ValueError(f"curriculum_json: {error}") from None
    chosen = None
    if not (isinstance(rules, str) and rules.strip().lower() == CURRICULUM):
        chosen = parse_names(rules, "rules", list(RULES))
        if chosen is None:
            raise ValueError(f"rules: expected {CURRICULUM!r} or comma-separated rule names among "
                             f"{', '.join(RULES)}, received {rules!r}")
        curriculum = keep_rules(curriculum, chosen)
    kept_families = parse_names(families, "families", FAMILIES)
    curriculum = curriculum.with_mode(curriculum_mode)
    if kept_families is not None:
        try:
            curriculum = curriculum.only_families(kept_families)
        except CurriculumError as error:
            raise ValueError(f"families: {error}") from None
    return SyncAVNegativeSpec(curriculum, chosen)


def _magnitude_words(rule: str, value) -> str:
    unit = RULES[rule].unit
    if value is None or unit == "none":
        return ""
    if unit == "seconds":
        if rule == "audio_shift":
            return f" by {value:+.3f} s ({'sound late' if value > 0 else 'sound early'})"
        return f" for {value:.3f} s"
    if unit == "ratio":
        return f" at {value:.3f}x speed"
    return f" into {int(value)} segments"


def _fits(choice, value) -> bool:
    """Whether a drawn magnitude can come from a curriculum entry (its number, or its range, either direction)."""
    magnitude = choice.magnitude
    if magnitude is None or value is None:
        return magnitude is None and value is None
    if not isinstance(magnitude, tuple):
        return abs(value - magnitude) < 1e-9
    low, high = magnitude
    candidates = [abs(value)] if RULES[choice.rule].unit == "seconds" else [value]
    if RULES[choice.rule].directional and RULES[choice.rule].unit == "ratio" and value > 0:
        candidates.append(1.0 / value)
    return any(low - 1e-9 <= v <= high + 1e-9 for v in candidates)


def _stage_words(curriculum, step: int, rule: str, value) -> str:
    """The active stage at ``step``, and the earlier stage a replayed row came from."""
    stages = curriculum.effective_stages
    current = curriculum.stage_index(step, PREVIEW_STEPS)

    def label(index):
        return repr(stages[index].name or str(index))

    words = f"stage {label(current)} at progress {step / PREVIEW_STEPS:.2f}"
    if not any(c.rule == rule and _fits(c, value) for c in stages[current].rules):
        earlier = [i for i in range(len(stages)) if any(c.rule == rule and _fits(c, value) for c in stages[i].rules)]
        if earlier:
            words += f" (replaying stage {label(earlier[-1])})"
    return words


def _source_latents(codecs, dataset, index: int):
    """(video [B, ...], audio [B, ...], clip name) of clip ``index`` (and the next, for a swap's donor)."""
    if dataset is not None:
        if not isinstance(dataset, AVClipDataset) or not dataset.encoded:
            raise ValueError(f"dataset: expected the output of SyncAV AV Dataset, received {type(dataset).__name__}")
        n = len(dataset)
        rows = [index % n, (index + 1) % n] if n > 1 else [index % n]
        batch = dataset.latents(rows)
        if (batch.video.shape[1] != codecs.video_codec.latent_channels
                or batch.audio.shape[2] != codecs.audio_codec.latent_channels):
            raise ValueError("dataset: encoded with other codecs than the codecs input (connect both to the same "
                             "SyncAV Loader)")
        return batch.video, batch.audio, dataset.clips[rows[0]].name
    if (abs(codecs.fps - STANDARD.fps) > 1e-6 or codecs.sample_rate != STANDARD.sample_rate_hz
            or STANDARD.size_px % codecs.pixel_multiple):
        raise ValueError(f"dataset: not connected, and the BounceBench clips the preview falls back to "
                         f"({STANDARD.fps:g} fps, {STANDARD.sample_rate_hz} Hz, {STANDARD.size_px} px) do not fit "
                         f"these codecs ({codecs.fps:g} fps, {codecs.sample_rate} Hz); connect a SyncAV AV Dataset")
    seeds = split_seeds("train", 2, start=index)
    frames, waveform, _ = make_batch(seeds, STANDARD)
    with torch.no_grad():
        video = codecs.video_codec.encode(frames.float())
        audio = codecs.audio_codec.encode(waveform.float())
    return video, audio, f"BounceBench train clip {index}"


class SyncAVNegatives:
    """Chooses the temporal negatives (rules, curriculum) for DPO, and previews one of them."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "rules": ("STRING", {"default": CURRICULUM, "multiline": False,
                                 "tooltip": f"{CURRICULUM!r}: every rule of the curriculum. Or comma-separated rule "
                                            f"names to keep only those (magnitudes from the curriculum): "
                                            f"{', '.join(RULES)}."}),
            "curriculum_json": ("STRING", {"default": DEFAULT_CURRICULUM.to_json(), "multiline": True,
                                           "tooltip": "Stages from coarse to subtle: each runs until a fraction of "
                                                      "training ('until'), replays a share of earlier stages "
                                                      "('replay') and draws weighted rules with magnitudes in "
                                                      "seconds, a ratio or a count (see the README)."}),
            "curriculum_mode": (list(MODES), {"default": "staged",
                                              "tooltip": "staged: the stages in turn (coarse to subtle). none: every "
                                                         "rule of every stage mixed from the first step (ablation)."}),
            "families": ("STRING", {"default": "", "multiline": False,
                                    "tooltip": f"Keep only these rule families (ablation), comma-separated among "
                                               f"{', '.join(FAMILIES)}. Empty: all."}),
            "codecs": ("SYNCAV_CODECS", {"tooltip": "The codecs from SyncAV Loader (the preview is encoded, "
                                                    "distorted and decoded the way the trainer sees it)."}),
            "preview_index": ("INT", {"default": 0, "min": 0, "max": 1_000_000,
                                      "tooltip": "Which clip to preview: of the dataset, or of BounceBench's train "
                                                 "split when no dataset is connected."}),
            "preview_progress": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                           "tooltip": "Point of training to preview (0 = start, 1 = end): picks the "
                                                      "curriculum stage the negative is drawn from."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED,
                             "tooltip": "Seed of the preview's draw (rule, magnitude, position)."}),
        }, "optional": {
            "dataset": ("SYNCAV_DATASET", {"tooltip": "Preview on a clip of this dataset (else a BounceBench clip)."}),
        }}

    RETURN_TYPES = ("SYNCAV_NEGATIVES", "IMAGE", "AUDIO", "STRING", "FLOAT")
    RETURN_NAMES = ("negatives", "preview_images", "preview_audio", "preview_rule", "fps")
    OUTPUT_TOOLTIPS = (
        "The negatives spec for SyncAV DPO Trainer.",
        "The previewed negative's frames [F, H, W, 3] (decoded from the distorted latents, as the trainer sees it).",
        "The previewed negative's soundtrack.",
        "The rule and magnitude of the previewed negative, its curriculum stage and the clip.",
        "Frames per second of the preview (for Create Video).",
    )
    FUNCTION = "build"
    CATEGORY = "SyncAV"
    DESCRIPTION = ("Sets which temporal negatives the DPO trainer pairs each real clip with (audio shifted, "
                   "reversed, re-timed, shuffled, swapped, muted; video frozen or reversed) and their "
                   "coarse-to-subtle curriculum, and renders one negative as frames + audio so you can watch it.")

    def build(self, rules: str, curriculum_json: str, curriculum_mode: str, families: str, codecs,
              preview_index: int, preview_progress: float, seed: int, dataset=None):
        spec = build_spec(rules, curriculum_json, curriculum_mode, families)
        codecs = check_codecs(codecs)
        if not 0.0 <= preview_progress <= 1.0:
            raise ValueError(f"preview_progress: expected a fraction of training in [0, 1], received "
                             f"{preview_progress!r}")
        if isinstance(preview_index, bool) or not isinstance(preview_index, int) or preview_index < 0:
            raise ValueError(f"preview_index: expected a whole number >= 0, received {preview_index!r}")
        video, audio, clip_name = _source_latents(codecs, dataset, preview_index)
        vc, ac = codecs.video_codec, codecs.audio_codec
        axes = TimeAxes.latent(vc, ac, num_frames=vc.num_frames(video.shape[2]), audio_latents=audio.shape[1])
        step = min(round(preview_progress * PREVIEW_STEPS), PREVIEW_STEPS - 1)
        generator = torch.Generator().manual_seed(int(seed))
        curriculum = spec.curriculum
        plan = curriculum.sample(step, PREVIEW_STEPS, video.shape[0], generator, lengths=axes.lengths(video, audio),
                                 axes=axes)
        negatives = build_negatives(video, audio, axes, plan, generator)
        frames, waveform = codecs.decode(negatives.video[:1], negatives.audio[:1])
        num_frames = frames.shape[1]
        samples = round(num_frames / codecs.fps * codecs.sample_rate)
        waveform = torch.nn.functional.pad(waveform, (0, max(0, samples - waveform.shape[-1])))[..., :samples]
        rule, magnitude = plan[0]
        text = (f"{rule}: {RULES[rule].description}{_magnitude_words(rule, magnitude)} | "
                f"{_stage_words(curriculum, step, rule, magnitude)} | clip: {clip_name}")
        images = frames[0].float().cpu().contiguous()
        preview_audio = {"waveform": waveform.float().cpu().contiguous(), "sample_rate": int(codecs.sample_rate)}
        return (spec, images, preview_audio, text, float(codecs.fps))
