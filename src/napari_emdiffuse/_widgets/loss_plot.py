"""A live training-loss curve drawn with QPainter (no plotting library in the GUI thread).

Diffusion losses are noisy step to step, so the raw values are drawn faintly and a running
average on top; the y axis is logarithmic because the loss falls by orders of magnitude.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

SMOOTHING = 0.9  # weight of the past in the running average


class LossPlot(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.validation: list[tuple[int, float]] = []  # (step, PSNR dB), shown in the caption
        self.baseline_psnr: float | None = None
        self.baseline = "baseline"
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def clear(self) -> None:
        self.steps.clear()
        self.losses.clear()
        self.smoothed.clear()
        self.validation.clear()
        self.update()

    def add(self, step: int, loss: float) -> None:
        if not math.isfinite(loss) or loss <= 0:
            return
        prev = self.smoothed[-1] if self.smoothed else loss
        self.steps.append(step)
        self.losses.append(loss)
        self.smoothed.append(SMOOTHING * prev + (1 - SMOOTHING) * loss if self.smoothed else loss)
        self.update()

    def add_validation(self, step: int, psnr: float, baseline_psnr: float | None = None, baseline: str = "baseline") -> None:
        """A validation PSNR, beside the baseline's on the same patches (the line it must stay above)."""
        self.validation.append((step, psnr))
        self.baseline_psnr, self.baseline = baseline_psnr, baseline
        self.update()

    def caption(self) -> str:
        if not self.steps:
            return "loss: waiting for the first step"
        text = f"step {self.steps[-1]}   loss {self.smoothed[-1]:.4f}"
        if self.validation:
            text += f"   validation PSNR {self.validation[-1][1]:.2f} dB"
            if self.baseline_psnr is not None:
                text += f" ({self.baseline} {self.baseline_psnr:.2f} dB)"
        return text

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fg = self.palette().color(self.foregroundRole())
        p.drawText(QRectF(4, 2, self.width() - 8, 16), Qt.AlignmentFlag.AlignLeft, self.caption())
        area = QRectF(36, 22, max(self.width() - 44, 10), max(self.height() - 30, 10))
        p.setPen(QPen(QColor(fg.red(), fg.green(), fg.blue(), 90), 1))
        p.drawRect(area)
        if len(self.steps) >= 2:
            lo = math.log10(min(self.losses))
            hi = math.log10(max(self.losses))
            hi = hi if hi > lo else lo + 1
            s0, s1 = self.steps[0], max(self.steps[-1], self.steps[0] + 1)

            def point(step: int, value: float) -> QPointF:
                x = area.left() + (step - s0) / (s1 - s0) * area.width()
                y = area.bottom() - (math.log10(value) - lo) / (hi - lo) * area.height()
                return QPointF(x, y)

            for values, color, width in ((self.losses, QColor(120, 160, 220, 90), 1), (self.smoothed, QColor(240, 170, 60), 2)):
                path = QPainterPath(point(self.steps[0], values[0]))
                for s, v in zip(self.steps[1:], values[1:]):
                    path.lineTo(point(s, v))
                p.setPen(QPen(color, width))
                p.drawPath(path)
            p.setPen(fg)
            p.drawText(QRectF(0, area.top() - 6, 34, 12), Qt.AlignmentFlag.AlignRight, f"{10**hi:.2g}")
            p.drawText(QRectF(0, area.bottom() - 6, 34, 12), Qt.AlignmentFlag.AlignRight, f"{10**lo:.2g}")
        p.end()
