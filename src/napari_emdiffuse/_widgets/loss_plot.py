"""A live training plot drawn with QPainter (no plotting library in the GUI thread).

Two panels share the step axis. The upper one is the loss: diffusion losses are noisy step to
step, so the raw values are drawn faintly and a running average on top, on a logarithmic axis
because the loss falls by orders of magnitude. The lower one is what tells whether the model is
worth using: the validation PSNR of the best estimate on held-out patches, against a dashed line
at the variant's baseline on the same patches (the noisy input, bicubic, linear interpolation);
a model whose points lie below that line is worse than doing nothing.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

SMOOTHING = 0.9  # weight of the past in the running average
LOSS_COLOR = QColor(240, 170, 60)
RAW_LOSS_COLOR = QColor(120, 160, 220, 90)
VALIDATION_COLOR = QColor(80, 200, 120)
BASELINE_COLOR = QColor(230, 80, 80)
CAPTION_LINES = 2
LINE_HEIGHT = 15
LEFT = 40  # room for the axis figures


class LossPlot(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.validation: list[tuple[int, float]] = []  # (step, PSNR dB)
        self.baseline_psnr: float | None = None
        self.baseline = "baseline"
        self.setMinimumHeight(190)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def clear(self) -> None:
        self.steps.clear()
        self.losses.clear()
        self.smoothed.clear()
        self.validation.clear()
        self.baseline_psnr, self.baseline = None, "baseline"
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
        if not math.isfinite(psnr):
            return
        self.validation.append((step, psnr))
        if baseline_psnr is not None and math.isfinite(baseline_psnr):
            self.baseline_psnr, self.baseline = baseline_psnr, baseline
        self.update()

    def caption(self, width: float | None = None) -> list[str]:
        """The plot's text lines: the loss now, then the latest validation against the baseline;
        within ``width`` pixels the baseline's name and figure give way first (the dashed line
        is labelled with the name), the margin over it stays."""
        if not self.steps:
            return ["loss: waiting for the first step"]
        lines = [f"step {self.steps[-1]}   loss {self.smoothed[-1]:.4f}"]
        if self.validation:
            psnr = self.validation[-1][1]
            text = f"validation {psnr:.2f} dB"
            if self.baseline_psnr is not None:
                margin = psnr - self.baseline_psnr
                full = f"{text}, {self.baseline} {self.baseline_psnr:.2f} dB ({margin:+.2f})"
                fits = width is None or self.fontMetrics().horizontalAdvance(full) <= width
                text = full if fits else f"{text} ({margin:+.2f} dB over the baseline)"
            lines.append(text)
        return lines

    def panels(self) -> tuple[QRectF, QRectF]:
        """Where the loss and the validation panels lie in the widget."""
        top = 4 + CAPTION_LINES * LINE_HEIGHT
        width = max(self.width() - LEFT - 8, 10)
        height = max(self.height() - top - 6, 20)
        loss_h = height * 0.55
        return QRectF(LEFT, top, width, loss_h - 4), QRectF(LEFT, top + loss_h + 4, width, height - loss_h - 4)

    def step_range(self) -> tuple[int, int]:
        """The step axis both panels share: the losses' steps and the validations'."""
        steps = self.steps + [s for s, _ in self.validation]
        s0 = min(steps) if steps else 0
        return s0, max(max(steps) if steps else 1, s0 + 1)

    def validation_range(self) -> tuple[float, float]:
        """The PSNR axis (dB): the validation points and the baseline, with a margin."""
        values = [v for _, v in self.validation] + ([self.baseline_psnr] if self.baseline_psnr is not None else [])
        lo, hi = min(values), max(values)
        pad = max(0.5, 0.1 * (hi - lo))
        return lo - pad, hi + pad

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fg = self.palette().color(self.foregroundRole())
        frame = QColor(fg.red(), fg.green(), fg.blue(), 90)
        for i, line in enumerate(self.caption(self.width() - 8)):
            p.setPen(fg)
            p.drawText(QRectF(4, 2 + i * LINE_HEIGHT, self.width() - 8, LINE_HEIGHT), Qt.AlignmentFlag.AlignLeft, line)
        loss_area, val_area = self.panels()
        p.setPen(QPen(frame, 1))
        p.drawRect(loss_area)
        p.drawRect(val_area)
        s0, s1 = self.step_range()

        def x_of(step: int, area: QRectF) -> float:
            return area.left() + 5 + (step - s0) / (s1 - s0) * (area.width() - 10)  # points stay inside the frame

        if len(self.steps) >= 2:
            lo, hi = math.log10(min(self.losses)), math.log10(max(self.losses))
            hi = hi if hi > lo else lo + 1

            def point(step: int, value: float) -> QPointF:
                return QPointF(x_of(step, loss_area), loss_area.bottom() - (math.log10(value) - lo) / (hi - lo) * loss_area.height())

            for values, color, width in ((self.losses, RAW_LOSS_COLOR, 1), (self.smoothed, LOSS_COLOR, 2)):
                path = QPainterPath(point(self.steps[0], values[0]))
                for s, v in zip(self.steps[1:], values[1:]):
                    path.lineTo(point(s, v))
                p.setPen(QPen(color, width))
                p.drawPath(path)
            p.setPen(fg)
            p.drawText(QRectF(0, loss_area.top() - 6, LEFT - 2, 12), Qt.AlignmentFlag.AlignRight, f"{10**hi:.2g}")
            p.drawText(QRectF(0, loss_area.bottom() - 12, LEFT - 2, 12), Qt.AlignmentFlag.AlignRight, f"{10**lo:.2g}")  # above the panel's edge
        p.setPen(fg)
        p.drawText(loss_area.adjusted(4, 2, -4, -2), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop, "loss")
        if self.validation:
            self._paint_validation(p, val_area, x_of, fg)
        else:
            p.drawText(val_area, Qt.AlignmentFlag.AlignCenter, "validation PSNR: after the first validation")
        p.end()

    def _paint_validation(self, p: QPainter, area: QRectF, x_of, fg: QColor) -> None:
        """The validation PSNR points, joined, over the dashed baseline line, with its dB axis."""
        lo, hi = self.validation_range()

        def y_of(value: float) -> float:
            return area.bottom() - (value - lo) / (hi - lo) * area.height()

        if self.baseline_psnr is not None:
            pen = QPen(BASELINE_COLOR, 1.5)
            pen.setStyle(Qt.PenStyle.DashLine)
            p.setPen(pen)
            y = y_of(self.baseline_psnr)
            p.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
            p.drawText(QRectF(area.left() + 4, y - 14, area.width() - 8, 12), Qt.AlignmentFlag.AlignLeft, self.baseline)
        points = [QPointF(x_of(s, area), y_of(v)) for s, v in self.validation]
        p.setPen(QPen(VALIDATION_COLOR, 2))
        if len(points) >= 2:
            path = QPainterPath(points[0])
            for q in points[1:]:
                path.lineTo(q)
            p.drawPath(path)
        p.setBrush(VALIDATION_COLOR)
        for q in points:
            p.drawEllipse(q, 3, 3)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.setPen(fg)
        p.drawText(QRectF(0, area.top(), LEFT - 2, 12), Qt.AlignmentFlag.AlignRight, f"{hi:.1f}")  # below it: the two panels' figures never meet
        p.drawText(QRectF(0, area.bottom() - 6, LEFT - 2, 12), Qt.AlignmentFlag.AlignRight, f"{lo:.1f}")
        p.drawText(area.adjusted(4, 2, -4, -2), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop, "validation PSNR (dB)")
