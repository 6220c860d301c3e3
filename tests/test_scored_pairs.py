"""Scored self-sample pairs (data/scored_pairs.py) on a micro joint model with the embedded codecs."""

import contextlib
import dataclasses
import json

import numpy as np
import pytest
import torch

from comfyui_syncav.files.safetensors_io import read_header
from comfyui_syncav.bouncebench.clips import make_clips
from comfyui_syncav.bouncebench.config import split_seeds
from comfyui_syncav.model.batch import PreferenceBatch
from comfyui_syncav.train.dpo_loss import DPOConfig, av_dpo_loss
from comfyui_syncav.data.pair_cache import CACHE_FILE
from comfyui_syncav.data.pair_scoring import ScoreWeights, caption_balls, score_samples
from comfyui_syncav.data.scored_pairs import ScoredPairsConfig, build_scored_pairs
from micro_models import micro_pipeline


pytestmark = pytest.mark.usefixtures("one_thread")


PROMPTS = [clip.caption for clip in make_clips(split_seeds("train", 3))]
CONFIG = ScoredPairsConfig(samples_per_prompt=4, steps=2, min_gap=0.0, seed=3)


class CountCalls:
    """Counts forwards of a module (a forward pre-hook); use as a context manager."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(self._hook)
        return self

    def _hook(self, module, args):
        self.calls += 1

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def built(tmp_path_factory, text_encoder):
    pipeline = micro_pipeline(text_encoder)
    cache = tmp_path_factory.mktemp("pairs")
    with CountCalls(pipeline.model) as counter:
        pairs = build_scored_pairs(pipeline, PROMPTS, CONFIG, cache_dir=cache, progress=False)
    assert counter.calls > 0 and not pairs.from_cache
    return pipeline, cache, pairs


# ------------------------------------------------------------------------------------------------ scoring

def test_a_real_clip_outscores_its_audio_rolled_by_4_frames_and_degenerate_samples_lose():
    clip = make_clips(split_seeds("val", 1))[0]
    fps, rate = clip.fps, clip.sample_rate_hz
    rolled = clip.waveform.roll(4 * rate // int(fps), dims=-1)                      # audio 4 frames late
    real_score, real = score_samples(clip.frames, clip.waveform, fps, rate, clip.caption)
    rolled_score, shifted = score_samples(clip.frames, rolled, fps, rate, clip.caption)
    silent_score, _ = score_samples(clip.frames, torch.zeros_like(clip.waveform), fps, rate, clip.caption)
    blank_score, _ = score_samples(torch.zeros_like(clip.frames), clip.waveform, fps, rate, clip.caption)
    print(f"real {real_score:.3f} (F1 {real['event_f1']:.3f}, chance {real['chance_event_f1']:.3f}), "
          f"rolled {rolled_score:.3f} (F1 {shifted['event_f1']:.3f}), silent {silent_score:.3f}, "
          f"blank {blank_score:.3f}")
    assert real_score > rolled_score + 0.3
    assert real["event_f1"] > shifted["event_f1"] and real["event_f1_margin"] > 0.5
    # A silent track or a blank video is no better on sync than an off-beat clip, and loses on quality.
    assert silent_score < rolled_score and blank_score < rolled_score
    assert set(real["terms"]) == {f.name for f in dataclasses.fields(ScoreWeights)}
    assert real["score"] == pytest.approx(real_score)
    json.dumps(real, allow_nan=False)                                               # strict JSON

    # The batch form scores each row as the single form does; weights reweigh the terms.
    scores, details = score_samples(torch.stack([clip.frames] * 2), torch.stack([clip.waveform, rolled]), fps, rate,
                                    clip.caption)
    assert scores.tolist() == pytest.approx([real_score, rolled_score]) and len(details) == 2
    f1_only, _ = score_samples(clip.frames, clip.waveform, fps, rate, clip.caption,
                               ScoreWeights(event_f1_margin=0, event_f1=1, blob_count=0, pitch=0))
    assert f1_only == pytest.approx(real["event_f1"])
    # Prompts without BounceBench balls get no quality terms.
    assert caption_balls("an orange ball and a blue ball bouncing, x") and not caption_balls("a dog barks")
    _, plain = score_samples(clip.frames, clip.waveform, fps, rate, "a dog barks")
    assert plain["terms"]["blob_count"] == plain["terms"]["pitch"] == 0.0


# ------------------------------------------------------------------------------------------------ building

def test_every_winner_outscores_its_loser_and_pairs_go_easy_to_hard(built):
    pipeline, _, pairs = built
    n = len(pairs)
    print(f"scores per prompt x sample:\n{pairs.scores}\ngaps (served order): {pairs.gap.tolist()}")
    assert n == len(PROMPTS) and pairs.dropped == 0
    assert pairs.scores.shape == (len(PROMPTS), CONFIG.samples_per_prompt)
    assert torch.all(pairs.winner_score >= pairs.loser_score)
    assert torch.all(pairs.gap[:-1] >= pairs.gap[1:]), pairs.gap                  # largest gap first
    for row in range(n):
        i = int(pairs.prompt_index[row])
        assert pairs.winner_score[row] == pairs.scores[i].max() and pairs.loser_score[row] == pairs.scores[i].min()
        assert pairs.scores[i, pairs.winner_k[row]] == pairs.winner_score[row]
    # The stored winner latents are the scored sample itself: decoding and scoring them gives the same score.
    row = 0
    frames, waveform = pipeline.decode(pairs.winner_video[row:row + 1], pairs.winner_audio[row:row + 1])
    fps, rate = pipeline.video_codec.fps, pipeline.audio_codec.sample_rate
    waveform = waveform[..., :round(frames.shape[1] / fps * rate)]
    score, _ = score_samples(frames[0], waveform[0], fps, rate, PROMPTS[int(pairs.prompt_index[row])],
                             CONFIG.weights)
    assert score == pytest.approx(float(pairs.winner_score[row]), abs=1e-9)
    # ... with the prompt's own text embeddings.
    text = pipeline.encode_prompts([PROMPTS[int(pairs.prompt_index[row])]])
    # Equal up to the text encoder's dependence on batch composition: a prompt encoded in a batch of 3 and alone
    # differed by up to 1.2e-6 (embeddings of magnitude ~3.3) with MKL's reproducible mode off, by 0 with it on.
    assert torch.allclose(pairs.text[row], text.embeddings[0], rtol=0, atol=1e-5)
    assert pairs.text_lengths[row] == text.lengths[0]
    assert pairs.winner_video.shape[1:] == pipeline.latent_shapes(2.0, 32, 32)[0][1:]


def test_min_gap_drops_the_small_gaps_without_sampling_again(built, text_encoder):
    pipeline, cache, pairs = built
    threshold = float(pairs.gap.median())
    with CountCalls(pipeline.model) as counter:
        kept = build_scored_pairs(pipeline, PROMPTS, CONFIG.with_changes(min_gap=threshold), cache_dir=cache,
                                  progress=False)
    assert counter.calls == 0 and kept.from_cache                                  # min_gap is applied on load
    expected = pairs.prompt_index[pairs.gap >= threshold]
    assert kept.prompt_index.tolist() == expected.tolist() and kept.dropped == len(pairs) - len(expected) > 0
    assert torch.all(kept.gap >= threshold)
    with pytest.raises(ValueError, match=r"all 3 pairs were dropped \(largest score gap "):
        build_scored_pairs(pipeline, PROMPTS, CONFIG.with_changes(min_gap=10.0), cache_dir=cache, progress=False)


def test_the_cache_is_reused_and_invalidated_when_the_weights_change(built, tmp_path, text_encoder):
    _, _, reference = built
    pipeline = micro_pipeline(text_encoder)                   # the same weights in a fresh pipeline
    first = build_scored_pairs(pipeline, PROMPTS, CONFIG, cache_dir=tmp_path, progress=False)
    tensors, metadata = read_header(tmp_path / CACHE_FILE)
    assert json.loads(metadata["prompts"]) == PROMPTS and metadata["model"] == "micro"
    assert json.loads(metadata["config"])["samples_per_prompt"] == 4 and metadata["model_config"] == "tiny"
    assert {"winner_video", "loser_audio", "text", "scores"} <= set(tensors)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert torch.equal(first.winner_video, reference.winner_video)                # same seeds, same samples

    with CountCalls(pipeline.model) as counter:
        again = build_scored_pairs(pipeline, PROMPTS, CONFIG, cache_dir=tmp_path, progress=False)
    assert counter.calls == 0 and again.from_cache
    for name in ("winner_video", "winner_audio", "loser_video", "loser_audio", "text", "winner_score"):
        assert torch.equal(getattr(again, name), getattr(first, name)), name
    assert again.details == first.details

    with torch.no_grad():                                      # a training step's worth of change to one weight
        pipeline.model.audio_model.blocks[0].ffn[0].weight.add_(1e-3)
    with CountCalls(pipeline.model) as counter:
        changed = build_scored_pairs(pipeline, PROMPTS, CONFIG, cache_dir=tmp_path, progress=False)
    assert counter.calls > 0 and not changed.from_cache
    with CountCalls(pipeline.model) as counter:                # other prompts: sampled again too
        build_scored_pairs(pipeline, PROMPTS[:2], CONFIG, cache_dir=tmp_path, progress=False)
    assert counter.calls > 0


def test_batches_serve_preference_batches_in_order_cycling(built):
    pipeline, _, pairs = built
    make_batch = pairs.batches(2)
    video_shape, audio_shape = pipeline.latent_shapes(2.0, 32, 32)
    served = []
    for step in range(3):
        batch = make_batch(step, torch.Generator().manual_seed(step))
        assert isinstance(batch, PreferenceBatch) and batch.rules is None
        w, l = batch.winner, batch.loser
        assert w.video.shape == l.video.shape == (2, *video_shape[1:])
        assert w.audio.shape == l.audio.shape == (2, *audio_shape[1:])
        assert w.text_video.shape[0] == 2 and w.text_video.shape[2] == pipeline.text_encoder.dim
        assert torch.equal(w.text_video, l.text_video) and torch.equal(w.text_audio, w.text_video)
        assert torch.equal(w.text_video_lengths, pairs.text_lengths[make_batch.rows(step)])
        served.append(make_batch.rows(step).tolist())
        for j, row in enumerate(served[-1]):
            assert torch.equal(w.video[j], pairs.winner_video[row]) and torch.equal(l.audio[j], pairs.loser_audio[row])
        # A step's batch is the same whatever the generator: a resumed run rebuilds it.
        assert torch.equal(make_batch(step, torch.Generator().manual_seed(99)).loser.video, l.video)
    assert served == [[0, 1], [2, 0], [1, 2]]                   # easy -> hard, cycling over the 3 pairs
    assert pairs.batches(1, rule="scored")(0, None).rules == ("scored",)

    # The DPO loss takes them as they are (reference: the same model, so the margin is 0 and the loss log 2).
    loss, logs = av_dpo_loss(pipeline.model, *make_batch(0, None)[:2], torch.Generator().manual_seed(0), DPOConfig(),
                             reference_context=lambda model: contextlib.nullcontext(model))
    assert loss.item() == pytest.approx(2 * np.log(2), rel=1e-4) and "video_accuracy" in logs


def test_clear_errors(built):
    pipeline = built[0]
    with pytest.raises(ValueError, match="at least one prompt"):
        build_scored_pairs(pipeline, [], CONFIG)
    with pytest.raises(ValueError, match=r"prompts\[1\]: expected a non-empty string"):
        build_scored_pairs(pipeline, ["a red ball bouncing, high clicks", "  "], CONFIG)
    with pytest.raises(ValueError, match="one string"):
        build_scored_pairs(pipeline, "a red ball bouncing", CONFIG)
    with pytest.raises(ValueError, match="samples_per_prompt: expected an integer >= 2"):
        ScoredPairsConfig(samples_per_prompt=1)
    with pytest.raises(ValueError, match="min_gap"):
        ScoredPairsConfig(min_gap=-1.0)
    with pytest.raises(ValueError, match="every weight is 0"):
        ScoreWeights(event_f1_margin=0, blob_count=0, pitch=0)
    with pytest.raises(ValueError, match="batch_size"):
        built[2].batches(0)
    assert ScoredPairsConfig(weights={"pitch": 0.0}, guidance={"text_scale_video": 2.0}).weights.pitch == 0.0


def test_scored_pairs_train_a_lora_through_train_dpo(built, tmp_path):
    from safetensors.torch import load_file

    from comfyui_syncav.runtime.lora import LoraSpec
    from comfyui_syncav.train.dpo_training import DPOTrainingConfig, train_dpo

    pipeline, _, pairs = built
    config = DPOTrainingConfig(steps=2, batch_size=2, lora=LoraSpec(rank=2), save_every=10, warmup_steps=1)
    result = train_dpo(pipeline, tmp_path / "run", config, pairs=pairs.batches(2), progress=False)
    lora = load_file(str(result.lora_path))
    assert lora and all(k.startswith("diffusion_model.") for k in lora)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())  # it trained
    with pytest.raises(ValueError, match="either batches .* or pairs"):
        train_dpo(pipeline, tmp_path / "run2", config, pairs=pairs.batches(2), batches=lambda s, g: None,
                  progress=False)
