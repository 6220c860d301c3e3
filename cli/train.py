"""``train-default`` and ``train-codec``: the embedded default and its video decoder trained on BounceBench (resumable)."""

from __future__ import annotations


def default_recipe(args):
    """The EmbeddedRecipe that ``train-default`` runs with these command-line options; a value the recipe refuses
    is named by its flag."""
    from dataclasses import replace

    from ..train.embedded_training import EmbeddedRecipe
    from ..train.value_rules import named_as

    with named_as(TRAIN_DEFAULT_FLAGS):
        recipe = replace(EmbeddedRecipe().with_steps(args.steps), batch_size=args.batch_size,
                         data_start_step=args.data_start_step, cross_modal_window_frames=args.cross_modal_window,
                         num_blocks=args.blocks)
        if args.lr is not None:
            recipe = replace(recipe, train=replace(recipe.train, lr=args.lr))
        if args.warmup_steps is not None:
            recipe = replace(recipe, train=replace(recipe.train, warmup_steps=args.warmup_steps))
        if args.noise_shift is not None:
            noise = replace(recipe.loss.noise, shift=args.noise_shift)
            recipe = replace(recipe, loss=replace(recipe.loss, noise=noise))
    return recipe


# train-default's flags, named in check_embedded_training_args's messages and in the recipe's value errors.
TRAIN_DEFAULT_FLAGS = {"out_dir": "--out", "init_weights": "--init", "batch_size": "--batch-size", "steps": "--steps",
                       "lr": "--lr", "data_start_step": "--data-start-step", "shift": "--noise-shift",
                       "cross_modal_window_frames": "--cross-modal-window", "num_blocks": "--blocks",
                       "warmup_steps": "--warmup-steps"}


def train_default_command(args) -> int:
    from ..train.embedded_training import check_embedded_training_args, train_embedded_default

    recipe = default_recipe(args)
    check_embedded_training_args(args.out, recipe, args.init, names=TRAIN_DEFAULT_FLAGS)
    result = train_embedded_default(args.out, recipe, init_weights=args.init, resume=not args.no_resume)
    last = result.state.history[-1] if result.state.history else {}
    print(f"trained {result.state.step} steps in {result.state.seconds / 60:.1f} min; last loss "
          f"{last.get('loss', float('nan')):.4f}; wrote {args.out}")
    return 0


def train_codec_command(args) -> int:
    from dataclasses import replace

    from ..files.atomic import check_output_path
    from ..generation.pipeline import EMBEDDED_VIDEO_DECODER_FILE
    from ..train.codec_training import DECODER_FILE_NAME, CodecRecipe, train_video_decoder
    from ..train.loop import CHECKPOINT_NAME
    from ..train.value_rules import named_as

    with named_as({"steps": "--steps"}):
        recipe = CodecRecipe()
        if args.steps is not None:
            recipe = replace(recipe, train=replace(recipe.train, steps=args.steps))
    with named_as({"steps": "--refine-steps"}):
        if args.refine_steps is not None:
            recipe = replace(recipe, refine_train=replace(recipe.refine_train, steps=args.refine_steps))
    # The shipped decoder must not be overwritten by a run (copying it in is the user's step).
    check_output_path(args.out, "--out", folder=True, writes=(DECODER_FILE_NAME, CHECKPOINT_NAME),
                      inputs={"shipped video decoder": EMBEDDED_VIDEO_DECODER_FILE})
    path, result = train_video_decoder(args.out, recipe, first_stage=args.first_stage, resume=not args.no_resume)
    print(f"trained {result.state.step} steps in {result.state.seconds / 60:.1f} min; wrote {path} (copy it into "
          "weights/ to use it)")
    return 0
