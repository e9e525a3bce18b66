"""The training plot shows validation against the baseline line (issue 11: "the train widget's
plot shows validation against the baseline line"), drawn where the figures say."""

from __future__ import annotations

import numpy as np

from napari_emdiffuse._widgets.loss_plot import BASELINE_COLOR, LOSS_COLOR, VALIDATION_COLOR, LossPlot


def _pixels(widget: LossPlot) -> np.ndarray:
    image = widget.grab().toImage()
    w, h = image.width(), image.height()
    return np.array([[image.pixelColor(x, y).getRgb()[:3] for x in range(w)] for y in range(h)], np.int32)


def _where(pixels: np.ndarray, color) -> np.ndarray:
    """(rows, cols) of the pixels within a few grey levels of ``color``."""
    return np.argwhere(np.abs(pixels - np.array(color.getRgb()[:3])).max(axis=2) <= 12)


def test_the_plot_draws_validation_points_above_or_below_the_dashed_baseline(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(320, 200)
    for step in range(1, 41):
        plot.add(step, 1.0 / step)
    plot.add_validation(10, 20.0, 18.0, "noisy input")
    plot.add_validation(40, 23.0, 18.0, "noisy input")
    assert plot.caption() == ["step 40   loss " + f"{plot.smoothed[-1]:.4f}", "validation 23.00 dB, noisy input 18.00 dB (+5.00)"]
    pixels = _pixels(plot)
    loss_area, val_area = plot.panels()
    assert len(_where(pixels, LOSS_COLOR)) > 20
    base = _where(pixels, BASELINE_COLOR)
    green = _where(pixels, VALIDATION_COLOR)
    assert len(base) > 20 and len(green) > 10
    assert (base[:, 0] >= val_area.top() - 1).all() and (green[:, 0] >= val_area.top() - 1).all()  # in the lower panel
    lo, hi = plot.validation_range()
    y_base = val_area.bottom() - (18.0 - lo) / (hi - lo) * val_area.height()
    assert abs(np.median(base[:, 0]) - y_base) <= 2  # the dashed line sits at the baseline's PSNR
    assert green[:, 0].min() < y_base - 10  # and the validation above it, where 20 and 23 dB lie


def test_a_validation_below_the_baseline_shows_as_such_and_a_new_run_starts_clean(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.add(1, 0.5)
    plot.add(2, 0.4)
    plot.add_validation(2, 8.6, 16.3, "noisy input")
    assert plot.caption()[1] == "validation 8.60 dB, noisy input 16.30 dB (-7.70)"
    assert plot.caption(width=120)[1] == "validation 8.60 dB (-7.70 dB over the baseline)"  # a narrow dock: the margin stays
    plot.clear()
    assert plot.caption() == ["loss: waiting for the first step"] and plot.baseline_psnr is None
    plot.grab()  # paints with nothing to draw
