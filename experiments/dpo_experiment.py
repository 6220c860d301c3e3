"""The DPO experiment: sync post-training of the embedded default, DPO vs SFT on matched steps, with ablations.

Every run trains a LoRA on the embedded default (or --weights) with BounceBench train clips for the same number of
steps, batch and learning rate, then generates the same BounceBench val clips with the same prompts and initial
noise as the base model, with plain text CFG and (for the main runs) SyncCFG, and scores sync and quality.

Runs (``--runs``, comma-separated):
  base               no LoRA (evaluated only)
  sft                LoRA fine-tuned on the real clips alone (the baseline the papers compare against)
  dpo                DPO against temporal negatives, default coarse-to-subtle curriculum
  dpo_sft            the same plus an SFT term on the winner (DPOConfig.sft_weight = 1)
  dpo_nocurriculum   DPO, every rule mixed from step 0 (curriculum mode "none")
  dpo_only_<family>  DPO with only that rule family (negatives.rules.FAMILIES)
  dpo_beta<B>        DPO with both betas = B (e.g. dpo_beta4000: a stronger KL anchor than the default)

Modifiers combine after ``dpo``, separated by ``_``, in any order: ``sft``, ``nocurriculum``, ``only_<family>``,
``beta<B>``, ``driven<F>`` (share F of the rows given to the driven tasks, DPOConfig.noise.driven_fraction),
``<tower>tower`` (LoRA on that tower only: ``audiotower`` / ``videotower``); e.g. ``dpo_beta12000_driven0.25``.

Each finished run leaves ``<out>/<run>/result.json``; running the script again skips finished runs, so an
interrupted experiment continues where it stopped. Prints a markdown table; last line ``RESULT ...`` with each
run's plain-CFG margin and the DPO-minus-SFT differences.

    python experiments/dpo_experiment.py --out runs/dpo_experiment --steps 200 --clips 64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from comfyui_syncav.guidance.sync_cfg import SyncCFGGuidance
from comfyui_syncav.negatives.rules import FAMILIES

MAIN_RUNS = ("base", "sft", "dpo")
GUIDANCE = {  # name -> (text scale, sync scale)
    "plain": (4.0, 1.0),
    "sync2": (4.0, 2.0),
}
COLUMNS = ("event_f1", "chance_event_f1", "event_f1_margin", "median_offset_ms", "av_align",
           "video_blob_count_ok", "video_colour_error", "video_radius_ratio", "audio_pitch_error_hz",
           "audio_spectral_distance_db")
# Quality proxies and whether larger is better (for the "no proxy degrades by more than 5 %" check). The radius
# ratio is scored as its distance to 1 (the real ball's size), and its change in units of the real radius.
QUALITY = {"video_blob_count_ok": True, "video_colour_error": False, "video_radius_ratio": None,
           "audio_pitch_error_hz": False, "audio_spectral_distance_db": False}
# Per-clip numbers kept in result.json so quality changes can be paired clip by clip (same prompt, same noise).
PER_CLIP_KEYS = ("seed", "event_f1", "median_offset_ms") + tuple(QUALITY)
KNOWN_RUNS = ("base", "sft", "dpo", "dpo_sft", "dpo_nocurriculum") + tuple(f"dpo_only_{f}" for f in FAMILIES)


def parse_run(run: str) -> dict | None:
    """The training settings a run name asks for, or None for a name that is not a training run.

    ``{"objective": "sft" | "dpo", "sft_weight", "curriculum_mode", "families", "beta", "driven_fraction",
    "towers"}``; None values mean the defaults.
    """
    settings = {"objective": "dpo", "sft_weight": 0.0, "curriculum_mode": None, "families": None, "beta": None,
                "driven_fraction": 0.0, "towers": None}
    if run == "sft":
        return {**settings, "objective": "sft"}
    tokens = run.split("_")
    if tokens[0] != "dpo":
        return None
    rest = tokens[1:]
    while rest:
        token = rest.pop(0)
        if token == "sft" and settings["sft_weight"] == 0.0:
            settings["sft_weight"] = 1.0
        elif token == "nocurriculum" and settings["curriculum_mode"] is None:
            settings["curriculum_mode"] = "none"
        elif token == "only" and rest and rest[0] in FAMILIES and settings["families"] is None:
            settings["families"] = (rest.pop(0),)
        elif token.endswith("tower") and token[:-len("tower")] in ("video", "audio") and settings["towers"] is None:
            settings["towers"] = (token[:-len("tower")],)
        elif token.startswith("beta") and settings["beta"] is None:
            settings["beta"] = _positive_number(token[len("beta"):])
            if settings["beta"] is None:
                return None
        elif token.startswith("driven") and settings["driven_fraction"] == 0.0:
            fraction = _positive_number(token[len("driven"):])
            if fraction is None or fraction > 1:
                return None
            settings["driven_fraction"] = fraction
        else:
            return None
    return settings


def _positive_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 0 and np.isfinite(value) else None


def training_config(run: str, args):
    from comfyui_syncav.runtime.lora import LoraSpec
    from comfyui_syncav.train.dpo_loss import DPOConfig
    from comfyui_syncav.train.noise_mix import NoiseMix
    from comfyui_syncav.train.dpo_training import DPOTrainingConfig

    settings = parse_run(run)
    if settings is None:
        raise ValueError(f"--runs: unknown run {run!r}; known: {', '.join(KNOWN_RUNS)}, or dpo with modifiers "
                         "(dpo_beta<B>, dpo_driven<F>, dpo_audiotower, ...)")
    lora = LoraSpec(rank=args.rank) if settings["towers"] is None else LoraSpec(rank=args.rank,
                                                                               towers=settings["towers"])
    # The noise levels are the same for every objective, so SFT and DPO stay matched.
    dpo = DPOConfig(noise=NoiseMix(shift=args.noise_shift, driven_fraction=settings["driven_fraction"]),
                    sft_weight=settings["sft_weight"], beta_video=settings["beta"], beta_audio=settings["beta"])
    return DPOTrainingConfig(objective=settings["objective"], dpo=dpo, curriculum_mode=settings["curriculum_mode"],
                             families=settings["families"], steps=args.steps, batch_size=args.batch_size,
                             lr=args.lr, lora=lora, save_every=max(1, args.steps // 4), seed=args.seed)


def fresh_pipeline(weights: str | None):
    from comfyui_syncav.model.checkpoint import load_joint_model
    from comfyui_syncav.generation.pipeline import build_embedded_default

    pipeline = build_embedded_default()
    if weights:
        pipeline.model = load_joint_model(weights)
    return pipeline


def run_one(run: str, args, out_dir: Path) -> dict:
    from comfyui_syncav.runtime.lora import apply_lora, load_lora
    from comfyui_syncav.train.dpo_training import train_dpo
    from comfyui_syncav.bouncebench.evaluation import evaluate_bouncebench

    result: dict = {"run": run}
    if run != "base":
        config = training_config(run, args)
        trained = train_dpo(fresh_pipeline(args.weights), out_dir, config, progress=not args.quiet)
        # Training time over every invocation (a resumed run, or a finished one evaluated again, keeps its total).
        result["train_seconds"] = trained.state.seconds
        last = trained.state.history[-1] if trained.state.history else {}
        result["last_logs"] = {k: v for k, v in last.items() if not k.startswith("rule/")}
        result["lora"] = str(trained.lora_path)
    pipeline = fresh_pipeline(args.weights)
    if run != "base":
        tensors, _ = load_lora(result["lora"])
        apply_lora(pipeline.model, tensors)
    rows = ("plain", "sync2") if (run in MAIN_RUNS or args.sync_all) else ("plain",)
    for row in rows:
        text, sync = GUIDANCE[row]
        guidance = SyncCFGGuidance(text_scale_video=text, text_scale_audio=text, sync_scale_video=sync,
                                   sync_scale_audio=sync)
        scores = evaluate_bouncebench(pipeline, split="val", clips=args.clips, guidance=guidance,
                                      steps=args.eval_steps, progress=False)
        result[row] = {k: scores.get(k) for k in COLUMNS}
        result[row]["per_clip"] = [{k: clip.get(k) for k in PER_CLIP_KEYS} for clip in scores["per_clip"]]
        print(f"{run} {row}: margin {scores['event_f1_margin']:.3f} (F1 {scores['event_f1']:.3f}), one-ball frames "
              f"{scores['video_blob_count_ok']:.3f}", flush=True)
    return result


def fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def fmt_change(change) -> str:
    if change is None:
        return "–"
    value, se = change
    return f"{100 * value:+.1f} %" + ("" if se is None else f" ± {100 * se:.1f}")


def quality_change(result: dict, base: dict, row: str) -> dict:
    """Change of each quality proxy vs the base model, signed so that negative = worse: ``{key: (change, se)}``.

    Relative to the base's mean (the radius ratio: its distance to 1, in units of the real radius), paired clip by
    clip when both results kept per-clip numbers (``se`` = standard error of the mean paired difference, else None).
    """
    changes = {}
    run_clips, base_clips = result[row].get("per_clip"), base[row].get("per_clip")
    for key, larger_is_better in QUALITY.items():
        if run_clips and base_clips:
            by_seed = {c["seed"]: c[key] for c in base_clips}
            pairs = np.array([(by_seed[c["seed"]], c[key]) for c in run_clips
                              if c[key] is not None and by_seed.get(c["seed"]) is not None], dtype=float)
            if len(pairs) < 2:
                continue
        else:  # an older result.json: means only
            a, b = base[row].get(key), result[row].get(key)
            if a is None or b is None:
                continue
            pairs = np.array([[a, b]], dtype=float)
        if larger_is_better is None:  # size: distance to the real size, lower is better, in real radii
            pairs, scale, larger_is_better = np.abs(pairs - 1.0), 1.0, False
        else:
            scale = abs(pairs[:, 0].mean())
            if scale == 0:
                continue
        diff = (pairs[:, 1] - pairs[:, 0]) / scale
        sign = 1.0 if larger_is_better else -1.0
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None
        changes[key] = (sign * float(diff.mean()), se)
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="experiment folder (one subfolder per run; reruns skip done runs)")
    parser.add_argument("--runs",
                        default="base,sft,dpo,dpo_nocurriculum," + ",".join(f"dpo_only_{f}" for f in FAMILIES))
    parser.add_argument("--weights", default=None, help="base joint-model weights (default: the embedded default)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-shift", type=float, default=1.0,
                        help="timestep shift of the training noise levels, every run (3: mostly high noise)")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--eval-steps", type=int, default=25)
    parser.add_argument("--sync-all", action="store_true", help="also evaluate SyncCFG for the ablation runs")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    runs = [r for r in args.runs.split(",") if r]
    for run in runs:
        if run != "base" and parse_run(run) is None:
            parser.error(f"--runs: unknown run {run!r}; known: {', '.join(KNOWN_RUNS)}, or dpo with modifiers "
                         "(dpo_beta<B>, dpo_driven<F>, dpo_audiotower, ...)")
    out = Path(args.out)
    results = {}
    for run in runs:
        done = out / run / "result.json"
        if done.is_file():
            results[run] = json.loads(done.read_text())
            print(f"{run}: done earlier ({done})", flush=True)
            continue
        (out / run).mkdir(parents=True, exist_ok=True)
        results[run] = run_one(run, args, out / run)
        from comfyui_syncav.files.atomic import write_text_atomic
        write_text_atomic(done, json.dumps(results[run], indent=1))

    print()
    print("| run | guidance | " + " | ".join(COLUMNS) + " | train s |")
    print("|---" * (3 + len(COLUMNS)) + "|")
    for run, result in results.items():
        for row in GUIDANCE:
            if row in result:
                train_s = f"{result['train_seconds']:.0f}" if "train_seconds" in result and row == "plain" else ""
                print(f"| {run} | {row} | " + " | ".join(fmt(result[row].get(k)) for k in COLUMNS) + f" | {train_s} |")
    if "base" in results:
        print()
        print("Quality change vs base (negative = worse; ± one standard error of the paired per-clip difference):")
        print("| run | guidance | " + " | ".join(QUALITY) + " |")
        print("|---" * (2 + len(QUALITY)) + "|")
        for run, result in results.items():
            for row in GUIDANCE:
                if run != "base" and row in result and row in results["base"]:
                    changes = quality_change(result, results["base"], row)
                    print(f"| {run} | {row} | " + " | ".join(fmt_change(changes.get(k)) for k in QUALITY) + " |")
    summary = {f"{run}_margin": r["plain"]["event_f1_margin"] for run, r in results.items()}
    if "base" in results:
        for run, r in results.items():
            if run != "base":
                worst = min((c for c, _ in quality_change(r, results["base"], "plain").values()), default=0.0)
                summary[f"{run}_worst_quality_change"] = worst
    if "dpo" in results and "sft" in results:
        for row in GUIDANCE:
            if row in results["dpo"] and row in results["sft"]:
                summary[f"dpo_minus_sft_margin_{row}"] = (results["dpo"][row]["event_f1_margin"]
                                                          - results["sft"][row]["event_f1_margin"])
                summary[f"dpo_minus_sft_offset_ms_{row}"] = (results["dpo"][row]["median_offset_ms"]
                                                             - results["sft"][row]["median_offset_ms"])
    print()
    print("RESULT " + " ".join(f"{k}={v:.4f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
