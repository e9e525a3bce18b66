"""Take the screenshots of docs/napari-tutorial.md: the plugin at work on its own sample data.

Run from the repository root (starts a virtual X server when there is no display):

    .venv/bin/python docs/make_screenshots.py            # ~2-4 minutes on a laptop CPU
    .venv/bin/python docs/make_screenshots.py --steps 40 # quicker, a less trained model

Every picture comes from the real widgets driving the real jobs, so the tutorial shows what the
current code does. The model is a bundled denoiser when the package ships one; otherwise the
script trains the "tiny" preset on the sample data for ``--steps`` steps (a demonstration, not
a useful model), and the tutorial says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "screenshots"
WINDOW = (1366, 768)  # a laptop screen: every control must be reachable here


def _ensure_display() -> None:
    """Re-run this script under xvfb-run when there is no X display (headless machines, CI)."""
    if os.environ.get("DISPLAY") or os.environ.get("EMDIFFUSE_SCREENSHOTS_UNDER_XVFB"):
        return
    if shutil.which("xvfb-run") is None:
        sys.exit("no display and no xvfb-run: install xvfb (make syslibs) or run on a desktop")
    env = {**os.environ, "EMDIFFUSE_SCREENSHOTS_UNDER_XVFB": "1"}
    cmd = ["xvfb-run", "-a", "-s", f"-screen 0 {WINDOW[0]}x{WINDOW[1]}x24", sys.executable, *sys.argv]
    sys.exit(subprocess.call(cmd, env=env))


def _save(viewer, name: str) -> None:
    """The whole window, as a user sees it (docks, layer list and canvas)."""
    path = OUT / name
    viewer.window._qt_window.grab().save(str(path))
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path} ({path.stat().st_size // 1024} kB)")


def _settle(app, viewer) -> None:
    """Let Qt lay out the docks, fit the view to the canvas as it now is, and paint."""
    for _ in range(5):
        app.processEvents()
    viewer.reset_view()
    viewer.window._qt_window.repaint()
    app.processEvents()


def _rectangle(layer, y0: int, x0: int, y1: int, x1: int) -> list[list[float]]:
    """A rectangle around pixel centres (y0, x0)-(y1, x1) of ``layer``, in world coordinates."""
    sy, sx = layer.scale[-2:]
    ty, tx = layer.translate[-2:]
    a, b = (ty + y0 * sy, tx + x0 * sx), (ty + y1 * sy, tx + x1 * sx)
    return [[a[0], a[1]], [a[0], b[1]], [b[0], b[1]], [b[0], a[1]]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="training steps for the demonstration model")
    args = parser.parse_args()
    _ensure_display()
    OUT.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtWidgets import QApplication

    import numpy as np

    from napari_emdiffuse import metrics
    from napari_emdiffuse._widgets import _common
    from napari_emdiffuse._widgets.registry import MODELS

    _common.SYNCHRONOUS = True  # one step after another, so each picture shows a finished state
    viewer = napari.Viewer(title="napari-emdiffuse tutorial")
    viewer.window._qt_window.resize(*WINDOW)
    viewer.window._qt_window.move(0, 0)
    app = QApplication.instance()
    viewer.open_sample("napari-emdiffuse", "sstem_clean")
    viewer.open_sample("napari-emdiffuse", "sstem_noisy")
    clean, noisy = viewer.layers["ssTEM clean"], viewer.layers["ssTEM noisy (simulated)"]
    viewer.dims.set_point(0, 3 * clean.scale[0])
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    (overlays.scale_bar if overlays is not None else viewer.scale_bar).visible = True
    _settle(app, viewer)
    _save(viewer, "01_sample_data.png")

    # --- train on a region the user trusts ------------------------------------------------
    region = viewer.add_shapes(
        [_rectangle(clean, 16, 16, 239, 175)], shape_type="rectangle", name="trusted region",
        edge_color="yellow", face_color="transparent", edge_width=0.004, units=("micrometer", "micrometer"),
    )  # fmt: skip
    enhance_dock, enhance = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Enhance")
    dock, train = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Train / fine-tune")
    bundled = [e for e in MODELS.entries("denoise") if e.source == "bundled"]
    if bundled:
        model_note = f"the bundled model {bundled[0].name}"
        train.select_start(f"fine-tune: {bundled[0].label}")
        train.iterations.setValue(max(1, args.steps // 5))
    else:
        model_note = f"the tiny preset trained for {args.steps} steps"
        train.select_start("preset: tiny")
        train.iterations.setValue(args.steps)
    train.pickers["input"].select(noisy)
    train.pickers["target"].select(clean)
    train.region.select(region)
    train.device.setCurrentText("cpu")
    train.run()
    _settle(app, viewer)
    train.scroll.verticalScrollBar().setValue(train.scroll.verticalScrollBar().maximum())  # the loss curve
    _settle(app, viewer)
    _save(viewer, "02_train.png")
    if "training preview" in viewer.layers:  # a run too short for a mid-run validation has none
        viewer.layers.remove("training preview")
    app.processEvents()  # napari 0.9 under Xvfb wants the removal drawn before layers are added
    region.visible = False

    # --- enhance the slice shown, with an uncertainty map (Train stays open below) -----------
    enhance.image.select(noisy)
    enhance.select_model(train.last_model)
    enhance.scope.setCurrentIndex(enhance.scope.findData("slice"))
    enhance.device.setCurrentText("cpu")  # steps and samples: the model's own, at which its bounds are calibrated
    enhance.run()
    result, uncertainty = enhance.result_layers
    clean.visible = False
    _settle(app, viewer)
    _save(viewer, "03_enhance.png")
    enhance.expert.set_open(True)
    enhance.scroll.verticalScrollBar().setValue(enhance.scroll.verticalScrollBar().maximum())
    _settle(app, viewer)
    _save(viewer, "03b_enhance_scrolled.png")
    viewer.window.remove_dock_widget(dock)
    viewer.window.remove_dock_widget(enhance_dock)

    # --- compare: side by side, metrics against the clean image ----------------------------
    dock, compare = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Compare")
    compare.choose([noisy, result, uncertainty, clean])
    compare.side_by_side()
    compare.choose([noisy, result])
    compare.reference.select(clean)
    compare.compute_metrics()
    compare.choose([noisy, result, uncertainty, clean])
    _settle(app, viewer)
    _save(viewer, "04_compare.png")
    compare.restore_view()
    viewer.window.remove_dock_widget(dock)

    # --- presets --------------------------------------------------------------------------
    dock, _ = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Presets")
    _settle(app, viewer)
    _save(viewer, "05_presets.png")
    print(f"model used: {model_note}")
    for row in compare.rows:
        print(f"{row['layer']}: PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}, FRC resolution {row['frc_resolution'] * 1000:.1f} nm")
    # how much of the gap to the reference is grey levels only: the same output after a
    # least-squares linear fit of its grey values to the reference (quoted in the tutorial)
    out, ref = np.asarray(result.data[0], np.float64), np.asarray(clean.data[3], np.float64)
    gain, offset = np.polyfit(out.ravel(), ref.ravel(), 1)
    print(
        f"enhanced mean {out.mean():.1f} (clean {ref.mean():.1f}), std {out.std():.1f} (clean {ref.std():.1f}); "
        f"PSNR after a linear grey-level fit: {metrics.psnr(gain * out + offset, ref):.2f} dB"
    )
    viewer.close()


if __name__ == "__main__":
    main()
