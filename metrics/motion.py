"""Visual events for sync metrics: impacts of coloured blobs, or peaks of motion energy for any clip.

A plain numpy library (no ComfyUI, no scipy, no OpenCV). Input is frames ``[F, H, W, 3]`` in 0..1 (numpy or torch)
and their rate; frame ``i`` is shown at ``i / fps`` seconds, and output times are on that axis.

Two detectors (docs/metrics.md):
- **blobs** (clips of distinct coloured objects on a plain background, e.g. BounceBench): the background is the
  clip's median colour; foreground pixels are grouped by colour *direction* from the background (an anti-aliased
  edge pixel is a blend of blob and background, so it points the same way as the blob's core); each colour group is
  tracked by its coverage-weighted centroid; an event is an abrupt reversal of the vertical or horizontal velocity
  (an impact with a floor, ceiling or wall), timed between frames by fitting two straight pieces that meet at the
  impact ("hinge" least squares), since impacts fall between frames.
- **motion** (anything): peaks of motion energy, the mean absolute difference between consecutive frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .onsets import pick_peaks

__all__ = [
    "as_frames", "motion_energy", "motion_events", "BlobTracks", "track_blobs", "blob_events", "visual_events",
]

# Blob analysis runs on frames no larger than this (area-averaged): centroids stay sub-pixel accurate and the
# cost stays small on real-resolution video.
_ANALYSIS_MAX_SIDE_PX = 128

VISUAL_EVENT_MODES = ("auto", "blobs", "motion")   # which detector finds visual events (visual_events)


def as_frames(frames, name: str = "frames") -> np.ndarray:
    """``[F, H, W, 3]`` numpy/torch in 0..1 -> float64 numpy ``[F, H, W, 3]``."""
    if hasattr(frames, "detach"):  # torch without importing it: this module stays numpy-only
        frames = frames.detach().cpu().double().numpy()
    array = np.asarray(frames, dtype=np.float64)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"{name}: expected frames [F, H, W, 3] (RGB in 0..1), got shape {tuple(array.shape)}")
    if array.shape[0] < 1 or array.shape[1] < 1 or array.shape[2] < 1:
        raise ValueError(f"{name}: expected at least one frame of at least 1x1 px, got shape {tuple(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def _check_fps(fps: float) -> float:
    if not (fps > 0):
        raise ValueError(f"fps: expected a positive frame rate, got {fps!r}")
    return float(fps)


# ------------------------------------------------------------------------------------------------ motion energy

def motion_energy(frames, fps: float, *, noise_factor: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean absolute difference between consecutive frames, less the sensor/codec noise.

    frames: ``[F, H, W, 3]``. Returns ``(energy [F-1], times_s [F-1])``; value ``t`` compares frames ``t`` and
    ``t + 1`` and is timed midway between them, ``(t + 0.5) / fps``.
    Each absolute pixel difference is soft-thresholded by ``noise_factor`` times the median absolute difference
    of the clip (most pixels do not move, so that median is the noise level; it is 0 on clean synthetic video):
    on a noisy clip the noise otherwise dominates the mean and buries the moving object's contribution.
    """
    video = as_frames(frames)
    rate = _check_fps(fps)
    difference = np.abs(np.diff(video, axis=0))
    if difference.size == 0:
        return np.zeros(0), np.zeros(0)
    noise = noise_factor * float(np.median(difference))
    energy = np.maximum(difference - noise, 0).mean(axis=(1, 2, 3))
    return energy, (np.arange(energy.size) + 0.5) / rate


def motion_events(frames, fps: float, *, threshold_rel: float = 0.3, min_excess_rel: float = 0.5,
                  min_energy: float = 1e-3, min_spacing_s: float = 0.05) -> np.ndarray:
    """Times in seconds ``[K]`` of motion-energy peaks (see ``motion_energy``).

    A peak must rise over the median energy by ``threshold_rel`` of the (max - median) range and by
    ``min_excess_rel`` times the median itself (steady motion or sensor noise is not an event), and reach
    ``min_energy`` (mean absolute change in 0..1 units; a frozen or nearly frozen clip has no events).
    """
    energy, times_s = motion_energy(frames, fps)
    if energy.size == 0:
        return np.zeros(0)
    median = float(np.median(energy))
    peaks_s, _ = pick_peaks(energy, times_s, threshold_rel=threshold_rel, min_excess=min_excess_rel * median,
                            min_height=min_energy, min_spacing_s=min_spacing_s)
    return peaks_s


# ------------------------------------------------------------------------------------------------------- blobs

@dataclass
class BlobTracks:
    """Blobs found in a clip, one per colour group.

    colours: ``[K, 3]`` RGB of each blob's core. centroids_px: ``[K, F, 2]`` (row, column) in pixels of the input
    frames, NaN where the blob is absent. area_px: ``[K, F]`` coverage-weighted area in input pixels.
    background: ``[3]`` RGB. ``K == 0`` when the clip has no plain background or no blob.
    """
    colours: np.ndarray
    centroids_px: np.ndarray
    area_px: np.ndarray
    background: np.ndarray


def area_downsample(video: np.ndarray) -> tuple[np.ndarray, int]:
    """Area-average ``[F, H, W, 3]`` by an integer factor so the longer side is at most the analysis size."""
    factor = max(1, math.ceil(max(video.shape[1], video.shape[2]) / _ANALYSIS_MAX_SIDE_PX))
    if factor == 1:
        return video, 1
    f, h, w, c = video.shape
    h, w = h // factor * factor, w // factor * factor
    return video[:, :h, :w].reshape(f, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4)), factor


def track_blobs(frames, *, background_tolerance: float = 0.1, min_background_fraction: float = 0.5,
                foreground_threshold: float = 0.15, colour_angle_deg: float = 25.0, max_blobs: int = 8,
                min_area_px: float = 2.0, max_area_fraction: float = 0.25,
                min_presence_fraction: float = 0.5) -> BlobTracks:
    """Find coloured blobs on a plain background and their centroid in every frame.

    frames: ``[F, H, W, 3]`` in 0..1.
    background_tolerance / min_background_fraction: the background counts as plain when at least that fraction of
        all pixels lies within that RGB distance of the clip's median colour; otherwise no blobs are returned.
    foreground_threshold: RGB distance from the background for a pixel to seed a colour group (a blob's core);
        raised to 4x the median distance so a noisy background does not seed groups.
    colour_angle_deg: pixels whose direction from the background is within this angle of a group belong to it.
    min_area_px: a blob is present in a frame when its coverage adds up to this many pixels (analysis scale).
    max_area_fraction / min_presence_fraction: a group is a blob only if its median area is at most that fraction
        of the frame (a large region is scenery, not an object) and it is present in at least that fraction of
        frames.
    """
    full = as_frames(frames)
    video, factor = area_downsample(full)
    f, h, w, _ = video.shape
    pixels = video.reshape(-1, 3)
    background = np.median(pixels, axis=0)
    empty = BlobTracks(np.zeros((0, 3)), np.zeros((0, full.shape[0], 2)), np.zeros((0, full.shape[0])), background)
    offset = pixels - background
    distance = np.linalg.norm(offset, axis=1)
    if np.mean(distance < background_tolerance) < min_background_fraction:
        return empty
    core_threshold = max(foreground_threshold, 4 * float(np.median(distance)))
    core = np.flatnonzero(distance > core_threshold)
    if core.size == 0:
        return empty
    direction = offset[core] / distance[core, None]
    cos_limit = math.cos(math.radians(colour_angle_deg))

    # Leader clustering (most distinct pixel first), then two spherical k-means passes to centre each group.
    centres: list[np.ndarray] = []
    unassigned = np.ones(core.size, dtype=bool)
    order = np.argsort(-distance[core], kind="stable")
    while unassigned.any() and len(centres) < max_blobs:
        leader = order[unassigned[order]][0]
        members = unassigned & (direction @ direction[leader] > cos_limit)
        centres.append(direction[members].mean(axis=0))
        unassigned &= ~members
    centre_array = np.stack(centres)
    for _ in range(2):
        centre_array /= np.linalg.norm(centre_array, axis=1, keepdims=True)
        label = np.argmax(direction @ centre_array.T, axis=1)
        centre_array = np.stack([direction[label == k].mean(axis=0) if np.any(label == k) else centre_array[k]
                                 for k in range(len(centre_array))])
    centre_array /= np.linalg.norm(centre_array, axis=1, keepdims=True)

    # Coverage of every pixel by every group: its offset projected on the group's core colour, 0..1. Pixels
    # pointing elsewhere (another blob, the background's noise) get none.
    label = np.argmax(direction @ centre_array.T, axis=1)
    projection = offset @ centre_array.T  # [P, K]
    norms = np.maximum(distance, 1e-12)[:, None]
    aligned = (projection / norms > cos_limit) & (distance[:, None] > 0.5 * core_threshold)
    rows = (np.arange(h) + 0.5) * factor - 0.5  # analysis pixel centres in input pixel coordinates
    cols = (np.arange(w) + 0.5) * factor - 0.5
    colours, centroids, areas = [], [], []
    for k in range(len(centre_array)):
        if not np.any(label == k):
            continue
        strength = float(np.percentile(projection[core[label == k], k], 90))
        coverage = np.where(aligned[:, k], np.clip(projection[:, k] / strength, 0, 1), 0.0).reshape(f, h, w)
        area = coverage.sum(axis=(1, 2))
        present = area >= min_area_px
        if present.mean() < min_presence_fraction or np.median(area[present]) > max_area_fraction * h * w:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            row = (coverage.sum(axis=2) * rows).sum(axis=1) / area
            col = (coverage.sum(axis=1) * cols).sum(axis=1) / area
        centroid = np.stack([row, col], axis=1)
        centroid[~present] = np.nan
        colours.append(background + strength * centre_array[k])
        centroids.append(centroid)
        areas.append(area * factor ** 2)
    if not colours:
        return empty
    return BlobTracks(np.stack(colours), np.stack(centroids), np.stack(areas), background)


def _hinge_time(times: np.ndarray, values: np.ndarray, lo: float, hi: float, steps: int = 241) -> float:
    """Break time in [lo, hi] of the best continuous two-piece linear fit to ``values [N]`` at ``times [N]``."""
    grid = np.linspace(lo, hi, steps)
    before = np.minimum(times[None] - grid[:, None], 0)  # [G, N]
    after = np.maximum(times[None] - grid[:, None], 0)
    design = np.stack([np.ones_like(before), before, after], axis=-1)  # [G, N, 3]
    coef = np.linalg.pinv(design) @ values  # [G, 3]
    residual = ((design @ coef[..., None])[..., 0] - values[None]) ** 2
    return float(grid[np.argmin(residual.sum(axis=1))])


def _axis_impacts(position: np.ndarray, min_speed: float, abrupt_factor: float) -> list[float]:
    """Impact times (in frames) on one axis of a centroid track ``[F]`` (NaN where absent)."""
    velocity = np.diff(position)  # [F-1], velocity[i] spans frames i..i+1
    finite = np.isfinite(velocity)
    if finite.sum() < 2:
        return []
    accel = np.diff(velocity)
    accel = accel[np.isfinite(accel)]
    # Free flight dominates a track, so the median acceleration is the steady pull (gravity on the vertical axis,
    # ~0 on the horizontal one) and the median deviation from it is the centroid's noise.
    steady = float(np.median(accel)) if accel.size else 0.0
    noise = float(np.median(np.abs(accel - steady))) if accel.size else 0.0
    moving = np.flatnonzero(finite & (np.abs(np.nan_to_num(velocity)) >= min_speed))
    # A reversal: two moving intervals of opposite sign, at most one slow interval between them (when the impact
    # falls mid-interval, that interval's net displacement is small). The top of a throw also reverses, but
    # smoothly: there the velocity changes by just the steady pull, while an impact departs from it by about
    # twice the impact speed.
    flips = [(i, j) for i, j in zip(moving[:-1], moving[1:])
             if j - i <= 2 and np.sign(velocity[i]) != np.sign(velocity[j])
             and np.all(np.isfinite(velocity[i:j + 1]))
             and abs(velocity[j] - velocity[i] - steady * (j - i)) >= max(2 * min_speed, abrupt_factor * noise)]
    impacts = []
    frames = np.arange(position.size, dtype=np.float64)
    for n, (i, j) in enumerate(flips):
        # The impact lies between frames i and j + 1. Fit on frames from one before to one after that span, but not
        # past the neighbouring impacts (a window that holds two impacts is not two straight pieces).
        first = max(i - 1, flips[n - 1][1] + 1 if n else 0)
        last = min(j + 2, flips[n + 1][0] if n + 1 < len(flips) else position.size - 1)
        window = np.arange(first, last + 1)
        window = window[np.isfinite(position[window])]
        if np.sum(window <= i) >= 2 and np.sum(window >= j + 1) >= 2:
            impacts.append(_hinge_time(frames[window], position[window], float(i), float(j + 1)))
        else:
            # At the clip's edge: intersect the line through frame i with slope velocity[i] and the line through
            # frame j + 1 with slope velocity[j].
            vi, vj = velocity[i], velocity[j]
            t = (position[j + 1] - position[i] + vi * i - vj * (j + 1)) / (vi - vj)
            impacts.append(float(np.clip(t, i, j + 1)))
    return impacts


def blob_events(tracks: BlobTracks, fps: float, *, min_speed_px_per_frame: float = 0.5,
                abrupt_factor: float = 3.0, merge_s: float = 0.05) -> np.ndarray:
    """Impact times in seconds ``[K]`` from blob tracks (see ``track_blobs``).

    min_speed_px_per_frame: both sides of a reversal must move at least this fast (input pixels per frame), so a
        blob at rest or jittering does not make events.
    abrupt_factor: the velocity change, less the track's steady acceleration (its median: gravity), must exceed
        this many times the centroid's noise (median deviation from that acceleration) and twice
        ``min_speed_px_per_frame``, so the smooth top of an arc is not an impact.
    merge_s: events closer than this (a corner hit seen on both axes, two groups of one object) become one, at
        their mean time.
    """
    rate = _check_fps(fps)
    impacts_frames = []
    for centroid in tracks.centroids_px:
        for axis in range(2):
            impacts_frames += _axis_impacts(centroid[:, axis], min_speed_px_per_frame, abrupt_factor)
    times_s = np.sort(np.asarray(impacts_frames, dtype=np.float64)) / rate
    return _merge_close(times_s, merge_s)


def _merge_close(times_s: np.ndarray, merge_s: float) -> np.ndarray:
    if times_s.size == 0:
        return times_s
    groups, current = [], [times_s[0]]
    for t in times_s[1:]:
        if t - current[0] < merge_s:
            current.append(t)
        else:
            groups.append(current)
            current = [t]
    groups.append(current)
    return np.asarray([np.mean(g) for g in groups])


def visual_events(frames, fps: float, *, mode: str = "auto", min_spacing_s: float = 0.05) -> tuple[np.ndarray, str]:
    """Visual event times in seconds ``[K]`` and the detector used (``"blobs"`` or ``"motion"``).

    mode: ``"blobs"`` (impacts of tracked coloured blobs; none found -> no events), ``"motion"`` (motion-energy
    peaks), or ``"auto"`` (blobs when the clip has a plain background with at least one blob, else motion).
    """
    if mode not in VISUAL_EVENT_MODES:
        raise ValueError(f"mode: expected 'auto', 'blobs' or 'motion', got {mode!r}")
    if mode in ("auto", "blobs"):
        tracks = track_blobs(frames)
        if len(tracks.colours) or mode == "blobs":
            return blob_events(tracks, fps, merge_s=min_spacing_s), "blobs"
    return motion_events(frames, fps, min_spacing_s=min_spacing_s), "motion"
