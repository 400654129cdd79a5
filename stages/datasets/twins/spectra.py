"""Smooth, physically-shaped reflectance spectra and a sensor model for synthetic twins.

Reflectances are unitless (0..1) functions of wavelength in nm. They are not measured library
spectra; they reproduce the features a classifier can use (chlorophyll absorption, red edge,
NIR plateau, water's NIR darkness, asphalt's flat darkness, paints' colour peaks) so that twins
have the real datasets' separable and confusable class pairs.
"""

from __future__ import annotations

import numpy as np


def _gauss(wl: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((wl - center) / width) ** 2)


def _sigmoid(wl: np.ndarray, center: float, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(wl - center) / width))


def vegetation(wl: np.ndarray, *, green: float, red: float, nir: float, edge: float = 715.0) -> np.ndarray:
    """Leaf-like: green peak, red absorption, red edge at ``edge`` nm, NIR plateau, water dip at 970 nm."""
    blue = 0.75 * red
    visible = blue + (red - blue) * _sigmoid(wl, 520, 15) + (green - red) * _gauss(wl, 552, 28)
    ramp = _sigmoid(wl, edge, 11.0)
    refl = visible * (1 - ramp) + nir * ramp
    return refl * (1 - 0.08 * _gauss(wl, 970, 25))


def soil(wl: np.ndarray, *, low: float, high: float) -> np.ndarray:
    """Bare soil: a convex rise from blue to NIR with an iron-oxide shoulder near 900 nm."""
    rise = _sigmoid(wl, 620, 110)
    return (low + (high - low) * rise) * (1 - 0.04 * _gauss(wl, 900, 60))


def flat(wl: np.ndarray, *, level: float, tilt: float = 0.0) -> np.ndarray:
    """Grey materials (asphalt, concrete, membranes): near-flat with a linear tilt over the range."""
    return level * (1 + tilt * (wl - 700.0) / 350.0)


def water(wl: np.ndarray, *, turbidity: float = 0.02) -> np.ndarray:
    """Open water: blue-green reflectance, dark beyond 750 nm."""
    return 0.055 * np.exp(-(wl - 400.0) / 140.0) + turbidity * _gauss(wl, 570, 60) + 0.004


def paint(wl: np.ndarray, *, base: float, peaks: list[tuple[float, float, float]]) -> np.ndarray:
    """A painted or dyed surface: a base level plus Gaussian colour peaks ``(center, width, amplitude)``."""
    refl = np.full_like(wl, base, dtype=np.float64)
    for center, width, amp in peaks:
        refl = refl + amp * _gauss(wl, center, width)
    return refl


def step(wl: np.ndarray, *, low: float, high: float, at: float, width: float = 20.0) -> np.ndarray:
    """A colourant edge, e.g. red rubber or clay tiles: ``low`` below ``at`` nm, ``high`` above."""
    return low + (high - low) * _sigmoid(wl, at, width)


def solar_irradiance(wl: np.ndarray) -> np.ndarray:
    """Relative at-sensor irradiance: a 5800 K blackbody through Rayleigh loss and O2 / H2O bands."""
    um = wl / 1000.0
    planck = 1.0 / (um**5 * (np.exp(1.4388e4 / (wl * 5800.0)) - 1.0))
    planck = planck / planck.max()
    rayleigh = np.exp(-0.0088 * um**-4.05)
    absorption = (
        1
        - 0.55 * _gauss(wl, 761, 3.5)  # O2-A
        - 0.15 * _gauss(wl, 823, 12)  # H2O
        - 0.55 * _gauss(wl, 938, 18)  # H2O
        - 0.25 * _gauss(wl, 1000, 40) * 0.2
    )
    return planck * rayleigh * absorption


def diffuse_sky(wl: np.ndarray) -> np.ndarray:
    """Shadowed pixels see only skylight: weaker and bluer than direct sun."""
    return 0.22 * (wl / 500.0) ** -1.6


def noise_sigma(wl: np.ndarray) -> np.ndarray:
    """Per-band read noise in DN: worse at the detector's blue and NIR ends."""
    return 6.0 * (1 + 2.0 * _sigmoid(-wl, -420, 12) + 2.0 * _sigmoid(wl, 960, 25))
