"""Exactly reproducible arithmetic for BounceBench: the same seed gives bit-identical clips on every machine.

Random numbers are PCG64's raw 64-bit stream (fixed by its algorithm, unlike the distributions built on it), and the
generator uses only IEEE arithmetic that is exactly rounded everywhere (+, -, *, /, sqrt, comparisons) on float64,
one NumPy ufunc at a time (so no compiler can fuse a multiply-add): the few exponentials, sines and cosines it needs
are the Taylor series here, in Python floats, and tone tables are built from them by repeated complex multiplication.
NumPy's own ``exp``/``sin`` are not used because their SIMD variants differ in the last bit between CPUs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["uniforms", "exact_exp", "exact_cos_sin", "damped_phasor"]


def uniforms(generator: np.random.Generator, count: int) -> np.ndarray:
    """[count] float64 in [0, 1): the top 53 bits of PCG64's raw outputs (stable by the algorithm's definition)."""
    raw = generator.bit_generator.random_raw(count)
    return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def exact_exp(x: float) -> float:
    """e**x for |x| <= 1: Taylor series in Python floats (every operation exactly rounded, so identical anywhere)."""
    if not -1.0 <= x <= 1.0:
        raise ValueError(f"exact_exp: argument {x} outside [-1, 1]")
    term = total = 1.0
    for n in range(1, 30):
        term = term * x / n
        total = total + term
        if abs(term) < 1e-20:          # below half an ulp of the result (which is >= 1/e)
            break
    return total


def exact_cos_sin(x: float) -> tuple[float, float]:
    """(cos x, sin x) for |x| <= 4: Taylor series in Python floats, identical on every machine."""
    if not -4.0 <= x <= 4.0:
        raise ValueError(f"exact_cos_sin: argument {x} outside [-4, 4]")
    cos_total, sin_total, term = 1.0, 0.0, 1.0
    for n in range(1, 48):
        term = term * x / n
        if n % 4 == 1:
            sin_total = sin_total + term
        elif n % 4 == 2:
            cos_total = cos_total - term
        elif n % 4 == 3:
            sin_total = sin_total - term
        else:
            cos_total = cos_total + term
        if abs(term) < 1e-20:          # the remaining terms cannot change a result of size > 1e-4 any more
            break
    return cos_total, sin_total


def damped_phasor(decay_per_sample: float, radians_per_sample: float, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts [length] of z**k, z = exp(-decay + i radians), k = 0 .. length - 1, float64.

    Built by doubling (the second half of a table is the first half times z**n), each complex product as separate
    ufuncs, so the table is the same on every machine.
    """
    step_re, step_im = exact_cos_sin(radians_per_sample)
    rho = exact_exp(-decay_per_sample)
    power_re, power_im = rho * step_re, rho * step_im              # z**n for n = current table length
    re, im = np.ones(1), np.zeros(1)
    while re.shape[0] < length:
        new_re = np.subtract(np.multiply(re, power_re), np.multiply(im, power_im))
        new_im = np.add(np.multiply(re, power_im), np.multiply(im, power_re))
        re, im = np.concatenate([re, new_re]), np.concatenate([im, new_im])
        power_re, power_im = power_re * power_re - power_im * power_im, 2.0 * power_re * power_im
    return re[:length], im[:length]
