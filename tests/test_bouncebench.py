"""BounceBench: determinism, exact physics, exact sound timing, band limit, captions, splits, files, speed."""

import dataclasses
import hashlib
import json
import math
import time

import av
import numpy as np
import pytest
import torch

from comfyui_syncav.files.media_io import probe_mp4
from comfyui_syncav.bouncebench.clips import make_batch, make_clip, make_clips
from comfyui_syncav.bouncebench.config import BALL_CLASSES, SPLITS, STANDARD, VARIANTS, BounceBenchConfig, split_seeds
from comfyui_syncav.bouncebench.export import write_dataset
from comfyui_syncav.bouncebench.scene import caption_for

MIXED = dataclasses.replace(STANDARD, name="mixed", num_balls=(1, 3))


def clip_digest(clip) -> str:
    digest = hashlib.sha256()
    digest.update(clip.frames.numpy().tobytes())
    digest.update(clip.waveform.numpy().tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- determinism

def test_same_seed_gives_identical_clips_and_different_seeds_differ():
    first, again, other = make_clip(7), make_clip(7), make_clip(8)
    assert torch.equal(first.frames, again.frames) and torch.equal(first.waveform, again.waveform)
    assert first.impacts == again.impacts and first.caption == again.caption
    assert not torch.equal(first.frames, other.frames)
    assert not torch.equal(first.waveform, other.waveform)
    assert first.impact_times_s != other.impact_times_s


def test_clips_are_bit_identical_to_the_recorded_ones():
    # Recorded when the generator was written; only exactly rounded arithmetic and PCG64's raw stream go into a
    # clip, so these hold on every machine. A change here changes every clip of every split.
    assert clip_digest(make_clip(0)) == "651a2b6ae584c158"
    assert clip_digest(make_clip(SPLITS["test"][0], VARIANTS["three_balls"])) == "ca3390c5789b11f8"


def test_make_batch_equals_stacking_make_clip():
    seeds = [3, 11, 12, 40, 41, 99]            # one to three balls: absent ball slots must leave pixels untouched
    frames, waveform, captions = make_batch(seeds, MIXED)
    clips = [make_clip(seed, MIXED) for seed in seeds]
    assert len({len(c.balls) for c in clips}) == 3
    assert frames.shape == (6, 32, 32, 32, 3) and frames.dtype == torch.float32
    assert waveform.shape == (6, 1, 16000) and waveform.dtype == torch.float32
    assert torch.equal(frames, torch.stack([c.frames for c in clips]))
    assert torch.equal(waveform, torch.stack([c.waveform for c in clips]))
    assert captions == [c.caption for c in clips]


def test_make_batch_of_32_is_fast():
    # Measured 17 ms for 32 standard clips on one core of a 2-core CPU (docs/bouncebench.md); the bound is
    # generous because CI hosts vary, but a per-pixel Python loop (seconds) would still fail it.
    seeds = split_seeds("train", 32, start=320)
    make_batch(seeds)
    best = min(_timed(lambda: make_batch(seeds)) for _ in range(3))
    assert best < 1.0, f"make_batch(32) took {best:.3f} s"


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# ----------------------------------------------------------------------------------------------------- physics

def test_every_impact_is_on_its_surface_with_the_velocity_reversed():
    counted = {"floor": 0, "wall": 0, "ceiling": 0}
    for clip in make_clips(range(60), VARIANTS["three_balls"]):
        for impact in clip.impacts:
            path, t = clip.paths[impact["ball"]], impact["time_s"]
            r, size = path.radius_px, path.size_px
            # The flight that ends at the impact, evaluated at the impact time (one ulp earlier).
            (x, y), (vx_in, vy_in) = (a[0] for a in path.state_at(np.nextafter(t, -np.inf)))
            _, (vx_out, vy_out) = (a[0] for a in path.state_at(t))
            restitution = clip.balls[impact["ball"]]["restitution"]
            if impact["surface"] == "floor":
                assert abs(y + r - size) < 1e-6            # the bottom of the ball touches the floor
                assert vy_in > 0 and vy_out <= 0 and vy_in == pytest.approx(impact["speed_px_per_s"])
                assert vy_out == pytest.approx(-restitution * vy_in) or vy_out == 0.0   # 0: came to rest
            elif impact["surface"] == "ceiling":
                assert abs(y - r) < 1e-6 and vy_in < 0 < vy_out
                assert vy_out == pytest.approx(-restitution * vy_in)
            else:
                assert min(abs(x - r), abs(x + r - size)) < 1e-6
                assert vx_out == pytest.approx(-restitution * vx_in) and abs(vx_in) > 0
            counted[impact["surface"]] += 1
    assert counted["floor"] > 300 and counted["wall"] > 150 and counted["ceiling"] > 5


def test_balls_never_leave_the_box_between_impacts():
    # A missed impact would let a ball fly through a surface; 20,000 times per clip would catch it.
    times = np.linspace(0.0, 2.0, 20001)
    for clip in make_clips(range(60), VARIANTS["three_balls"]):
        for path in clip.paths:
            centres, _ = path.state_at(times)
            assert centres.min() >= path.radius_px - 1e-9 and centres.max() <= 32 - path.radius_px + 1e-9


def test_frames_show_the_balls_where_the_trajectories_put_them():
    for clip in make_clips(range(20)):
        rgb = torch.tensor(clip.balls[0]["rgb"])
        background = torch.tensor(STANDARD.background_rgb)
        # Coverage of each pixel by the (single) ball, recovered from its colour.
        coverage = ((clip.frames - background) @ (rgb - background)) / ((rgb - background) ** 2).sum()
        centre = torch.arange(32, dtype=torch.float32) + 0.5
        mass = coverage.sum(dim=(1, 2))
        x = (coverage.sum(dim=1) * centre).sum(dim=1) / mass
        y = (coverage.sum(dim=2) * centre).sum(dim=1) / mass
        error = torch.stack([x, y], dim=1).double() - torch.from_numpy(clip.centres_px[0])
        assert error.abs().max() < 0.15, (clip.seed, error.abs().max())
        radius = clip.balls[0]["radius_px"]
        assert mass.double().sub(math.pi * radius ** 2).abs().max() < 0.1 * math.pi * radius ** 2


def test_a_typical_clip_has_three_to_five_impacts_per_ball_and_keeps_moving():
    clips = make_clips(split_seeds("val", 200))
    per_ball = np.array([len(c.impacts) for c in clips])
    assert 3.5 < per_ball.mean() < 5.0            # measured 4.17 +- 0.85 on seeds 0-399
    assert per_ball.min() >= 2
    for clip in clips:
        steps = np.abs(np.diff(clip.centres_px[0], axis=0)).sum(axis=1)     # px moved per frame
        assert (steps > 0.5).mean() > 0.9, clip.seed
    assert np.mean([len(c.impacts) for c in make_clips(range(100), VARIANTS["fast"])]) > 1.3 * per_ball.mean()


# ------------------------------------------------------------------------------------------------------- sound

def _expected_soundtrack(clip, config: BounceBenchConfig) -> np.ndarray:
    """The clean soundtrack rebuilt from the ground truth with NumPy's exp/sin, independently of the generator."""
    fs = clip.sample_rate_hz
    t = np.arange(round(clip.seconds * fs)) / fs
    wave = np.zeros_like(t)
    for impact in clip.impacts:
        kind = BALL_CLASSES[clip.balls[impact["ball"]]["colour"]]
        relative = impact["speed_px_per_s"] / (config.loud_speed_px_per_s * config.speed_scale)
        amplitude = config.tone_peak * min(max(math.sqrt(relative), config.quietest_fraction), 1.0)
        since = t - impact["time_s"]
        inside = (since >= 0) & (since < config.tone_seconds - 1e-12)
        since = np.where(inside, since, 0.0)
        gains = np.array(kind.harmonic_gains) / sum(kind.harmonic_gains)
        for h, gain in enumerate(gains, start=1):
            tone = gain * np.exp(-since * h / kind.decay_s) * np.sin(2 * np.pi * kind.fundamental_hz * h * since)
            wave += amplitude * np.where(inside, tone, 0.0)
    return wave


def test_the_soundtrack_is_the_impacts_tones_at_their_exact_times():
    clean = dataclasses.replace(MIXED, noise_rms=0.0)
    for clip in make_clips(range(30), clean):
        wave = clip.waveform[0].double().numpy()
        expected = _expected_soundtrack(clip, clean)
        assert np.abs(wave - expected).max() < 1e-6, clip.seed      # float32 rounding is ~3e-8
        first = math.ceil(clip.impacts[0]["time_s"] * clip.sample_rate_hz)
        assert not wave[:first].any() and wave[first + 1] != 0    # silence up to the first impact, not a sample more
    # A 0.3-sample error in one impact time would show: the check above has teeth.
    shifted = make_clip(5, clean)
    shifted.impacts[0]["time_s"] += 0.3 / clean.sample_rate_hz
    assert np.abs(shifted.waveform[0].double().numpy() - _expected_soundtrack(shifted, clean)).max() > 1e-3


def _onset_s(wave: np.ndarray, near_s: float, fs: int) -> float | None:
    """First sample above a quarter of the loudest sample of the 20 ms after ``near_s``, searching from 20 ms
    before it; None where what came before (an earlier tone's tail, noise) is already above half that threshold."""
    start, peak_end = max(int((near_s - 0.02) * fs), 0), int((near_s + 0.02) * fs)
    envelope = np.abs(wave[start:peak_end])
    threshold = 0.25 * np.abs(wave[int(near_s * fs):peak_end]).max()
    before = envelope[:int(near_s * fs) - start - 1]
    if before.size and before.max() > 0.5 * threshold:
        return None
    return (start + np.nonzero(envelope > threshold)[0][0]) / fs


def test_each_impact_has_a_sound_onset_within_a_millisecond():
    errors_ms, skipped = [], 0
    for clip in make_clips(range(60), MIXED):
        wave = clip.waveform[0].double().numpy()
        for t in clip.impact_times_s:
            onset = _onset_s(wave, t, clip.sample_rate_hz)
            if onset is None:
                skipped += 1
                continue
            errors_ms.append((onset - t) * 1000)
    errors_ms = np.array(errors_ms)
    assert len(errors_ms) > 4 * skipped            # most impacts stand clear of the previous tone
    assert errors_ms.min() >= -1000 / 8000         # never a sound before its impact (within a sample)
    assert errors_ms.max() < 1.0                   # measured: median 0.11 ms, max 0.29 ms (449 impacts)


def test_audio_stays_below_2_khz_in_range_and_pitch_follows_colour():
    clips = make_clips(range(120), MIXED)
    frequencies = np.fft.rfftfreq(16000, 1 / 8000)
    for clip in clips:
        wave = clip.waveform[0].double().numpy()
        power = np.abs(np.fft.rfft(wave)) ** 2
        assert power[frequencies > 2000].sum() < 0.05 * power.sum()     # measured at most 0.8 %
        assert np.abs(wave).max() < 0.99
    peaks: dict[str, list[float]] = {}
    for clip in clips:
        if len(clip.balls) == 1:
            wave = clip.waveform[0].double().numpy()
            peak_hz = frequencies[np.abs(np.fft.rfft(wave * np.hanning(wave.size))).argmax()]
            peaks.setdefault(clip.balls[0]["colour"], []).append(peak_hz)
    assert set(peaks) == set(BALL_CLASSES)
    for colour, found in peaks.items():
        assert abs(np.median(found) - BALL_CLASSES[colour].fundamental_hz) < 10, (colour, found)


def test_louder_impacts_are_faster_ones():
    clean = dataclasses.replace(STANDARD, noise_rms=0.0)
    compared = 0
    for clip in make_clips(range(60), clean):
        wave = clip.waveform[0].double().numpy()
        # Loudness as the tone's RMS: a sampled peak wobbles by up to 12 % with the sub-sample phase, the energy not.
        isolated = [(i["speed_px_per_s"], np.sqrt(np.mean(wave[int(i["time_s"] * 8000):][:400] ** 2)))
                    for i in clip.impacts if i["time_s"] < clip.seconds - 0.05
                    and all(abs(j["time_s"] - i["time_s"]) > 0.1 for j in clip.impacts if j is not i)]
        for slow_speed, slow_rms in isolated:
            for fast_speed, fast_rms in isolated:
                # Loudness rises as sqrt(speed) between the quietest level and full loudness at loud_speed_px_per_s.
                unclipped = clean.quietest_fraction ** 2 < slow_speed / clean.loud_speed_px_per_s < 1 / 1.03
                if fast_speed > 1.03 * slow_speed and unclipped:
                    assert fast_rms > slow_rms, (clip.seed, slow_speed, fast_speed)
                    compared += 1
    assert compared > 50


# ----------------------------------------------------------------------------------------- captions, splits

def test_captions_name_every_ball_with_its_sound():
    assert caption_for([BALL_CLASSES["red"]]) == "a red ball bouncing, high clicks"
    assert caption_for([BALL_CLASSES["orange"], BALL_CLASSES["blue"]]) == \
        "an orange ball and a blue ball bouncing, bright pings and low thuds"
    assert caption_for([BALL_CLASSES[c] for c in ("red", "green", "blue")]) == \
        "a red ball, a green ball and a blue ball bouncing, high clicks, wooden knocks and low thuds"
    for clip in make_clips(range(40), MIXED):
        colours = [b["colour"] for b in clip.balls]
        assert len(set(colours)) == len(colours)                    # one sound per ball
        for ball in clip.balls:
            assert f"{ball['colour']} ball" in clip.caption and ball["sound_words"] in clip.caption
            assert BALL_CLASSES[ball["colour"]].sound_words == ball["sound_words"]


def test_splits_do_not_overlap_and_seeds_stay_inside():
    ranges = sorted(SPLITS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    assert split_seeds("val", 3) == [10**9, 10**9 + 1, 10**9 + 2]
    assert split_seeds("test", 2, start=5) == [SPLITS["test"][0] + 5, SPLITS["test"][0] + 6]
    assert not set(split_seeds("train", 1000, start=10**9 - 1000)) & set(split_seeds("val", 1000))
    with pytest.raises(ValueError, match="val"):
        split_seeds("val", 10, start=10**6 - 5)
    with pytest.raises(ValueError, match="split"):
        split_seeds("holdout", 1)


def test_variants_and_bad_knobs():
    for name, config in VARIANTS.items():
        clip = make_clip(1, config)
        assert config.name == name and clip.config_name == name
        assert config.num_balls[0] <= len(clip.balls) <= config.num_balls[1]
        assert config.radius_px[0] <= clip.balls[0]["radius_px"] <= config.radius_px[1]
    with pytest.raises(ValueError, match="num_balls"):
        BounceBenchConfig(num_balls=(1, 4))
    with pytest.raises(ValueError, match="palette"):
        BounceBenchConfig(palette=("red", "pink"))
    with pytest.raises(ValueError, match="seconds"):
        BounceBenchConfig(seconds=1.03)


# ----------------------------------------------------------------------------------------------------- files

def test_write_dataset_writes_playable_mp4_caption_and_ground_truth(tmp_path):
    files = write_dataset(tmp_path, "val", 2, progress=False)
    assert [f.video_path.name for f in files] == ["standard_val_1000000000.mp4", "standard_val_1000000001.mp4"]
    for seed, written in zip(split_seeds("val", 2), files):
        clip = make_clip(seed)
        info = probe_mp4(written.video_path)
        assert info["video"]["codec"] == "h264" and info["audio"]["codec"] == "aac"
        assert (info["video"]["width"], info["video"]["height"], info["video"]["fps"]) == (32, 32, 16.0)
        assert info["audio"]["sample_rate"] == 8000
        with av.open(str(written.video_path)) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]) / 255.0
        with av.open(str(written.video_path)) as container:
            audio = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
        assert frames.shape == (32, 32, 32, 3)
        assert np.abs(frames - clip.frames.numpy()).mean() < 0.03           # h264 at crf 18: measured 0.009
        # The decoded soundtrack lines up with the original to the sample (aac's priming delay is trimmed).
        original = clip.waveform[0].numpy().astype(np.float64)
        decoded = audio[:original.size].astype(np.float64)
        lags = range(-64, 65)
        correlation = [np.dot(original[max(0, -lag):original.size - max(0, lag)],
                              decoded[max(0, lag):original.size - max(0, -lag)]) for lag in lags]
        assert lags[int(np.argmax(correlation))] == 0
        assert written.caption_path.read_text(encoding="utf-8") == clip.caption
        truth = json.loads(written.ground_truth_path.read_text(encoding="utf-8"))
        assert truth["impacts"] == clip.impacts and truth["seed"] == seed and truth["config"] == "standard"
        assert (truth["seconds"], truth["fps"], truth["sample_rate_hz"]) == (2.0, 16.0, 8000)
        assert np.array(truth["centres_px"]).shape == (1, 32, 2)
