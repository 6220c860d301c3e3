"""``bouncebench`` (write benchmark clips) and ``eval`` (sync and quality on BounceBench, a JSON report)."""

from __future__ import annotations

from .common import apply_lora_arg, load_lora_arg, lora_file, shipped_files, stream_sync_scales


def bouncebench_command(args) -> int:
    from ..files.atomic import check_output_path
    from ..bouncebench.config import VARIANTS, split_seeds
    from ..bouncebench.export import write_dataset

    if args.variant not in VARIANTS:
        raise ValueError(f"--variant: expected one of {', '.join(VARIANTS)}, got {args.variant!r}")
    if args.clips < 1 or args.start < 0:
        raise ValueError(f"--clips / --start: expected at least 1 clip from a start >= 0, got --clips {args.clips} "
                         f"--start {args.start}")
    try:
        split_seeds(args.split, args.clips, args.start)
    except ValueError as error:
        raise ValueError(f"--clips / --start: {error}") from None
    check_output_path(args.out, "--out", folder=True)
    files = write_dataset(args.out, args.split, args.clips, VARIANTS[args.variant], start=args.start)
    print(f"wrote {len(files)} clips to {args.out}")
    return 0


def eval_command(args) -> int:
    from ..files.atomic import check_output_path
    from ..generation.generate import check_generation_args, resolve_device
    from ..guidance.sync_cfg import SyncCFGGuidance
    from ..bouncebench.config import VARIANTS, split_seeds
    from ..bouncebench.evaluation import evaluate_bouncebench
    from ..bouncebench.report import format_table
    from ..files.atomic import write_json_atomic

    if args.variant not in VARIANTS:
        raise ValueError(f"--variant: expected one of {', '.join(VARIANTS)}, got {args.variant!r}")
    if args.guidance == "plain":
        given = [flag for flag, value in (("--sync-scale", args.sync_scale), ("--sync-interval", args.sync_interval),
                                          ("--sync-scale-video", args.sync_scale_video),
                                          ("--sync-scale-audio", args.sync_scale_audio)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only apply to --guidance synccfg (plain means sync scales 1)")
        sync_scale, interval = 1.0, (0.0, 1.0)
    else:
        sync_scale = 2.0 if args.sync_scale is None else args.sync_scale
        interval = (0.0, 1.0) if args.sync_interval is None else args.sync_interval
    sync_video, sync_audio = stream_sync_scales(args, sync_scale)
    guidance = SyncCFGGuidance(text_scale_video=args.text_scale, text_scale_audio=args.text_scale,
                               sync_scale_video=sync_video, sync_scale_audio=sync_audio, sync_interval=interval)
    if args.clips < 1 or args.steps < 1:
        raise ValueError(f"--clips and --steps: expected positive numbers, got {args.clips} and {args.steps}")
    try:
        split_seeds(args.split, args.clips, start=args.seed)
    except ValueError as error:
        raise ValueError(f"--clips / --seed: {error}") from None
    check_generation_args(steps=args.steps, solver=args.solver, shift=args.shift)
    resolve_device(args.device, "--device")
    lora = load_lora_arg(args)
    # fail before the evaluation, not after it
    check_output_path(args.json, "--json", parent_must_exist=True,
                      inputs={"--lora": lora_file(args), **shipped_files()})

    from ..generation.pipeline import build_embedded_default

    pipeline = build_embedded_default(device=args.device)
    apply_lora_arg(pipeline, args, lora)
    result = evaluate_bouncebench(pipeline, split=args.split, seed=args.seed, clips=args.clips, variant=args.variant,
                                  guidance=guidance, steps=args.steps, solver=args.solver, shift=args.shift,
                                  include_real=args.real, progress=True)
    write_json_atomic(args.json, result)
    print(format_table(result))
    print(f"wrote {args.json}")
    return 0
