"""Pictures for the preparation report: is the pair aligned, which patches were kept.

An aligned pair shown as a green/magenta overlay is grey where the two agree and coloured where
they do not, which a person judges at a glance; rejected patches are outlined in red.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _grey(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float32)
    finite = a[np.isfinite(a)]
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    return np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def grey_rgb(a: np.ndarray) -> np.ndarray:
    """A grey image as 8-bit RGB, contrast from its percentiles."""
    return (np.repeat(_grey(a)[..., None], 3, axis=-1) * 255).astype(np.uint8)


def green_magenta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a`` in green, ``b`` in magenta (grey where equal), as 8-bit RGB."""
    ga, gb = _grey(a), _grey(b)
    return (np.stack([gb, ga, gb], axis=-1) * 255).astype(np.uint8)


def outline(rgb: np.ndarray, corners: Sequence[tuple[int, int]], patch: int, colour: tuple[int, int, int], width: int = 2) -> None:
    """Draw square outlines in place."""
    h, w = rgb.shape[:2]
    for y, x in corners:
        y1, x1 = min(y + patch, h), min(x + patch, w)
        rgb[y : y + width, x:x1] = colour
        rgb[max(y1 - width, 0) : y1, x:x1] = colour
        rgb[y:y1, x : x + width] = colour
        rgb[y:y1, max(x1 - width, 0) : x1] = colour


def pair_panel(input: np.ndarray, before: np.ndarray, after: np.ndarray, rejected: Sequence[tuple[int, int]], patch: int) -> np.ndarray:
    """Before | after registration, side by side, rejected patches outlined on the right.

    The input is shown lightly smoothed: shot noise would otherwise hide what is aligned."""
    from scipy.ndimage import gaussian_filter

    shown = gaussian_filter(np.asarray(input, np.float32), 1.0)
    left = green_magenta(shown, before)
    right = green_magenta(shown, after)
    outline(right, rejected, patch, (255, 40, 40))
    gap = np.full((left.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def stack_panels(panels: Sequence[np.ndarray], max_width: int = 1400) -> np.ndarray:
    """Panels one above the other on white, scaled to at most ``max_width`` pixels wide."""
    import cv2

    width = max(p.shape[1] for p in panels)
    scale = min(1.0, max_width / width)
    rows = []
    for p in panels:
        if scale < 1:
            p = cv2.resize(p, (int(p.shape[1] * scale), int(p.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        pad = np.full((p.shape[0], int(width * scale) - p.shape[1], 3), 255, np.uint8)
        rows += [np.concatenate([p, pad], axis=1), np.full((8, int(width * scale), 3), 255, np.uint8)]
    return np.concatenate(rows[:-1], axis=0)


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    from .safe_output import replacing_file

    path = Path(path)
    with replacing_file(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return path
