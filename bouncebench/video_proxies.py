"""BounceBench video quality proxies: does a clip show the caption's balls, in their colours, at a plausible size?

Read against the real clip of the seed (bouncebench/evaluation.py); a plain library (numpy, no ComfyUI).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..metrics.motion import area_downsample, as_frames, track_blobs

__all__ = ["FOREGROUND_DISTANCE", "MIN_BLOB_AREA_PX", "count_blobs", "video_quality"]

# Video proxies: a pixel is foreground when its RGB distance to the clip's median colour is at least this (the
# blob detector's core threshold, metrics/motion.py); components smaller than MIN_BLOB_AREA_PX are specks, not balls.
FOREGROUND_DISTANCE = 0.15
MIN_BLOB_AREA_PX = 2.0


def count_blobs(frames, colours=None, *, foreground_distance: float = FOREGROUND_DISTANCE,
                min_area_px: float = MIN_BLOB_AREA_PX, colour_angle_deg: float = 25.0) -> np.ndarray:
    """Number of separate blobs in each frame: ``[F]`` ints.

    frames ``[F, H, W, 3]`` in 0..1. The background is the clip's median colour; a pixel is foreground when its RGB
    distance to it is at least ``foreground_distance``. colours ``[K, 3]`` (e.g. ``track_blobs(frames).colours``):
    each foreground pixel joins the colour whose direction from the background is nearest (within
    ``colour_angle_deg``; other pixels are ignored), and a blob is an 8-connected component of one colour's pixels,
    so touching balls of different colours stay two blobs and a ball split into pieces counts as several. Without
    colours (None or empty) every foreground pixel counts, whatever its colour. Components smaller than
    ``min_area_px`` pixels (of the input frames) are specks, not blobs.
    """
    video, factor = area_downsample(as_frames(frames))
    f, h, w, _ = video.shape
    background = np.median(video.reshape(-1, 3), axis=0)
    offset = video - background
    distance = np.linalg.norm(offset, axis=-1)
    mask = distance >= foreground_distance                                          # [F, H, W]
    group = np.zeros((f, h, w), dtype=np.int64)
    if colours is not None and len(colours):
        directions = np.asarray(colours, dtype=np.float64).reshape(-1, 3) - background
        directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
        cosine = (offset / np.maximum(distance, 1e-12)[..., None]) @ directions.T   # [F, H, W, K]
        group = np.argmax(cosine, axis=-1)
        mask &= np.max(cosine, axis=-1) >= math.cos(math.radians(colour_angle_deg))
    # Label propagation: every foreground pixel starts with its own index and takes the smallest label of its
    # 8 neighbours of the same colour until nothing changes (at most the longest path through a component).
    big = f * h * w
    labels = np.where(mask, np.arange(big).reshape(f, h, w), big)
    padded_group = np.pad(group, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    same = [padded_group[:, dy:dy + h, dx:dx + w] == group for dy, dx in itertools.product((0, 1, 2), repeat=2)]
    while True:
        padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)), constant_values=big)
        smallest = labels
        for (dy, dx), same_colour in zip(itertools.product((0, 1, 2), repeat=2), same):
            smallest = np.minimum(smallest, np.where(same_colour, padded[:, dy:dy + h, dx:dx + w], big))
        updated = np.where(mask, smallest, big)
        if np.array_equal(updated, labels):
            break
        labels = updated
    counts = np.zeros(f, dtype=np.int64)
    min_cells = min_area_px / factor ** 2
    for k in range(f):
        _, sizes = np.unique(labels[k][mask[k]], return_counts=True)
        counts[k] = int(np.sum(sizes >= min_cells))
    return counts


def _assign(expected_rgb: np.ndarray, found_rgb: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (expected index, found index), each used once, minimising the total RGB distance; as many pairs as
    the shorter list (brute force: at most 3 balls and 8 blobs)."""
    n, k = len(expected_rgb), len(found_rgb)
    if n == 0 or k == 0:
        return []
    distance = np.linalg.norm(expected_rgb[:, None] - found_rgb[None], axis=-1)
    if n <= k:
        best = min(itertools.permutations(range(k), n), key=lambda p: sum(distance[i, p[i]] for i in range(n)))
        return [(i, best[i]) for i in range(n)]
    best = min(itertools.permutations(range(n), k), key=lambda p: sum(distance[p[j], j] for j in range(k)))
    return sorted((best[j], j) for j in range(k))


def _count_colours(expected_rgb: np.ndarray, tracks, angle_deg: float = 25.0) -> np.ndarray:
    """Colours to count blobs of: the caption's balls' colours, plus every tracked blob colour that is none of them
    (an extra object). Two caption colours closer than the tracker's colour angle (red and orange) stay apart."""
    directions = expected_rgb - tracks.background
    directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    extra = []
    for colour in tracks.colours:
        direction = (colour - tracks.background) / max(float(np.linalg.norm(colour - tracks.background)), 1e-12)
        if np.max(directions @ direction) < math.cos(math.radians(angle_deg)):
            extra.append(colour)
    return np.concatenate([expected_rgb, np.asarray(extra).reshape(-1, 3)])


def video_quality(frames, balls: list[dict], reference_size_px: int) -> dict:
    """Does the video show the caption's balls, in their colours and at a plausible size?

    frames ``[F, H, W, 3]`` in 0..1; balls: the real clip's ``BounceClip.balls`` (``rgb`` in 0..1, ``radius_px``);
    reference_size_px: the real clip's frame width (radii are compared in its pixels, so a generated clip of
    another size is rescaled). Returns:

    - ``video_blob_count_ok`` (0..1): fraction of frames with exactly ``len(balls)`` blobs (``count_blobs`` over
      the caption's colours and any other tracked colour: a ball split into pieces, a missing ball or an extra
      object fails the frame; so do real balls that overlap, which caps the real clips of multi-ball variants);
    - ``video_colour_error`` (RGB distance, 0..sqrt 3): mean over the caption's balls of the distance between the
      ball's colour and the colour of the blob tracked for it (``motion.track_blobs``; balls and blobs paired to
      minimise the total distance); None when no blob is tracked;
    - ``video_radius_ratio``: mean over paired balls of the tracked blob's radius (``sqrt(median area / pi)``) over
      the real ball's radius, 1 = the right size; None when no blob is tracked;
    - ``blobs_per_frame`` (mean), ``balls_tracked`` (how many of the caption's balls got a blob).
    """
    video = as_frames(frames)
    if not balls:
        raise ValueError("balls: expected at least one ball of the real clip, got none")
    tracks = track_blobs(video)
    expected_rgb = np.asarray([b["rgb"] for b in balls], dtype=np.float64)
    counts = count_blobs(video, _count_colours(expected_rgb, tracks))
    pairs = _assign(expected_rgb, tracks.colours)
    scale = reference_size_px / video.shape[2]
    colour_errors, ratios = [], []
    for ball_index, blob_index in pairs:
        colour_errors.append(float(np.linalg.norm(tracks.colours[blob_index] - expected_rgb[ball_index])))
        area = tracks.area_px[blob_index]
        area = area[np.isfinite(tracks.centroids_px[blob_index, :, 0])]
        radius_px = math.sqrt(float(np.median(area)) / math.pi) * scale if area.size else math.nan
        ratios.append(radius_px / float(balls[ball_index]["radius_px"]))
    return {
        "video_blob_count_ok": float(np.mean(counts == len(balls))),
        "video_colour_error": float(np.mean(colour_errors)) if colour_errors else None,
        "video_radius_ratio": float(np.nanmean(ratios)) if ratios and np.isfinite(ratios).any() else None,
        "blobs_per_frame": float(counts.mean()),
        "balls_tracked": len(pairs),
    }
