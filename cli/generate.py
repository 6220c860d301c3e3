"""``generate``: a clip with its soundtrack from the embedded default or an Ovi model."""

from __future__ import annotations

import time

from .common import apply_lora_arg, build_ovi, load_lora_arg, lora_file, shipped_files, stream_sync_scales


def generate_command(args) -> int:
    import torch

    from ..files.atomic import check_output_path
    from ..generation.generate import check_generation_args, generate_clip, resolve_device
    from ..files.media_io import write_mp4
    from ..generation.pipeline import EMBEDDED_TEXT_SCALE, build_embedded_default
    from ..guidance.sync_cfg import SyncCFGGuidance
    from ..ovi.prompt import compose_prompts
    from ..ovi.variants import OVI_TEXT_SCALE, get_variant
    from ..runtime.compile import apply_compile_choice

    started = time.perf_counter()
    # Everything that can be checked without the model, before it is loaded (an Ovi load takes minutes).
    prompts = compose_prompts(args.prompt, args.audio_prompt or "", video_negative=args.negative,
                              audio_negative=args.negative, speech=args.speech, sound=args.sound or "",
                              prompt_style=None if args.model == "embedded" else get_variant(args.model).prompt_style,
                              prompt_field="prompt", speech_field="--speech")
    check_generation_args(seconds=args.seconds, height_px=args.height, width_px=args.width, steps=args.steps,
                          solver=args.solver, shift=args.shift, seed=args.seed)
    sync_video, sync_audio = stream_sync_scales(args, args.sync_scale)
    text_scale = args.text_scale if args.text_scale is not None else (
        EMBEDDED_TEXT_SCALE if args.model == "embedded" else OVI_TEXT_SCALE)
    guidance = SyncCFGGuidance(text_scale_video=text_scale, text_scale_audio=text_scale,
                               sync_scale_video=sync_video, sync_scale_audio=sync_audio,
                               sync_interval=args.sync_interval, slg_blocks=args.slg_blocks,
                               anchors=args.sync_anchors)
    resolve_device(args.device, "--device")
    lora = load_lora_arg(args)
    check_output_path(args.out, "--out", suffixes=(".mp4",),
                      inputs={"--lora": lora_file(args), **shipped_files()})
    if args.model == "embedded":
        pipeline = build_embedded_default(device=args.device)
        if args.blocks_on_gpu is not None:
            from ..runtime.block_swap import enable_block_swap

            enable_block_swap(pipeline.model.cpu(), args.blocks_on_gpu, args.device)
    else:
        check_ovi_clip_memory(args)
        pipeline = build_ovi(args)
    apply_lora_arg(pipeline, args, lora)
    apply_compile_choice(pipeline.model, getattr(args, "compile", "off"), "--compile")
    with torch.inference_mode():
        clip = generate_clip(pipeline, prompts.video_prompt, prompts.audio_prompt,
                             seconds=args.seconds, height_px=args.height, width_px=args.width, seed=args.seed,
                             steps=args.steps, solver=args.solver, shift=args.shift, guidance=guidance,
                             video_negative=prompts.video_negative, audio_negative=prompts.audio_negative,
                             progress=True)
    write_mp4(args.out, clip.frames[0], clip.fps, clip.waveform[0], clip.sample_rate_hz)
    print(f"wrote {args.out}: {clip.frames.shape[1]} frames {clip.frames.shape[3]}x{clip.frames.shape[2]} at "
          f"{clip.fps:g} fps + {clip.sample_rate_hz} Hz audio, {clip.seconds:.2f} s "
          f"({time.perf_counter() - started:.1f} s)")
    return 0


def check_ovi_clip_memory(args) -> None:
    """An Ovi clip's frames must fit in memory: checked from the variant's rates before its weights load."""
    from ..generation.generate import check_fits_memory, clip_host_bytes
    from ..ovi.variants import get_variant

    variant = get_variant(args.model)
    seconds = args.seconds if args.seconds is not None else variant.seconds
    height = args.height if args.height is not None else variant.height_px
    width = args.width if args.width is not None else variant.width_px
    check_fits_memory(clip_host_bytes(seconds, height, width, variant.fps), "--seconds / --width / --height",
                      f"the decoded frames of a {seconds:g} s clip of {width}x{height} px at {variant.fps:g} fps")
