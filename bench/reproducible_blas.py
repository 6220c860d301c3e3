"""Benchmark: what MKL's strict reproducible mode (runtime/reproducible_blas.py) costs on the CPU.

The mode is fixed per process at MKL's first product, so each measurement runs in a fresh child process, alternating
``SYNCAV_REPRODUCIBLE_BLAS=0`` (MKL's default) and ``1`` (the package's default), ``--repeats`` children each. A child
times, on the embedded default (the shipped weights):

    train_step   one step of ``train-default``'s recipe (batch 32, fp32, AdamW, EMA), median of several
    dpo_step     one DPO step of the trainer (batch 8, LoRA rank 16), median of several
    sample       one 2 s clip, 25 UniPC steps, SyncCFG (text 4, sync 2: four passes a step)

and the parent prints the medians over children and the ratios strict / default on its last line:

    RESULT train_strict_over_default=... dpo_strict_over_default=... sample_strict_over_default=...

    python bench/reproducible_blas.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

MEASURES = ("train_step", "dpo_step", "sample")


def child(steps: int) -> dict[str, float]:
    from comfyui_syncav.generation.generate import generate_clip
    from comfyui_syncav.runtime.lora import LoraSpec
    from comfyui_syncav.generation.pipeline import build_embedded_default
    from comfyui_syncav.runtime.reproducible_blas import reproducible_blas_status
    from comfyui_syncav.guidance.sync_cfg import SyncCFGGuidance
    from comfyui_syncav.train.dpo_training import DPOTrainingConfig, train_dpo
    from comfyui_syncav.train.embedded_training import EmbeddedRecipe, train_embedded_default

    seconds: dict[str, list[float]] = {name: [] for name in MEASURES}
    last = [0.0]

    def timer(name: str):
        def on_step(step: int, logs: dict) -> None:
            now = time.perf_counter()
            seconds[name].append(now - last[0])
            last[0] = now
        return on_step

    with tempfile.TemporaryDirectory() as tmp:
        last[0] = time.perf_counter()
        train_embedded_default(os.path.join(tmp, "default"), EmbeddedRecipe().with_steps(steps + 1), export=False,
                               progress=False, callback=timer("train_step"))
        pipeline = build_embedded_default()
        last[0] = time.perf_counter()
        train_dpo(pipeline, os.path.join(tmp, "dpo"),
                  DPOTrainingConfig(steps=steps + 1, batch_size=8, lora=LoraSpec(rank=16, alpha=16), save_every=1000),
                  callback=timer("dpo_step"), progress=False)
    guidance = SyncCFGGuidance(text_scale_video=4, text_scale_audio=4, sync_scale_video=2, sync_scale_audio=2)
    pipeline = build_embedded_default()
    for _ in range(2):
        begin = time.perf_counter()
        generate_clip(pipeline, "a red ball bouncing", seconds=2, steps=25, guidance=guidance)
        seconds["sample"].append(time.perf_counter() - begin)
    # The first step / clip pays one-off costs (allocator, caches): leave it out.
    result = {name: statistics.median(values[1:]) for name, values in seconds.items()}
    result["status"] = reproducible_blas_status()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="children per mode (default 3)")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per child (default 4)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps)))
        return
    results: dict[str, list[dict]] = {"default": [], "strict": []}
    for repeat in range(args.repeats):
        for mode in (("default", "strict") if repeat % 2 == 0 else ("strict", "default")):
            env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
            env["SYNCAV_REPRODUCIBLE_BLAS"] = "1" if mode == "strict" else "0"
            done = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps)], env=env,
                                  capture_output=True, text=True, check=True)
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            results[mode].append(measured)
            print(f"# {mode:7s} ({measured['status']}): " +
                  ", ".join(f"{name} {measured[name]:.3f} s" for name in MEASURES), flush=True)
    median = {mode: {name: statistics.median(r[name] for r in runs) for name in MEASURES}
              for mode, runs in results.items()}
    ratios = " ".join(f"{name.split('_')[0]}_strict_over_default={median['strict'][name] / median['default'][name]:.3f}"
                      for name in MEASURES)
    seconds = " ".join(f"{name}_s_{mode}={median[mode][name]:.3f}" for mode in median for name in MEASURES)
    print(f"RESULT {ratios} {seconds}")


if __name__ == "__main__":
    main()
