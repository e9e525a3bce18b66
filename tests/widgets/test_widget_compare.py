"""Compare widget: grid view with linked cameras, swipe, metrics equal to an independent
computation, uncertainty above a threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

UM = ("micrometer",) * 3


def _open(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Compare")
    return widget


@pytest.fixture
def layers(make_napari_viewer, isbi, voxel):
    viewer = make_napari_viewer()
    clean = isbi.astype(np.float32)
    rng = np.random.default_rng(0)
    raw = viewer.add_image(clean + rng.normal(0, 25, clean.shape).astype(np.float32), name="raw", scale=voxel, units=UM)
    smooth = viewer.add_image(gaussian_filter(raw.data, (0, 1, 1)), name="smoothed", scale=voxel, units=UM)
    ref = viewer.add_image(clean, name="reference", scale=voxel, units=UM)
    other = viewer.add_image(np.zeros((4, 4), np.float32), name="unrelated")
    return viewer, raw, smooth, ref, other


def test_side_by_side_puts_each_chosen_layer_in_its_own_cell_and_restores(layers):
    viewer, raw, smooth, ref, other = layers
    w = _open(viewer)
    from napari.utils._proxies import PublicOnlyProxy

    w.choose([PublicOnlyProxy(raw), smooth, ref])  # what a plugin's viewer hands out is a proxy
    w.side_by_side()
    assert viewer.grid.enabled and not other.visible
    cells = {viewer.grid.position(viewer.layers.index(lyr), viewer.layers) for lyr in (raw, smooth, ref)}
    assert len(cells) == 3  # three cells, one camera: napari's grid shares it, so views stay linked
    w.restore_view()
    assert not viewer.grid.enabled and other.visible and raw.visible


def test_metrics_match_an_independent_computation(layers):
    viewer, raw, smooth, ref, _ = layers
    w = _open(viewer)
    viewer.dims.set_point(0, 2 * ref.scale[0])  # slice 2
    w.choose([raw, smooth, ref])
    w.reference.select(ref)
    w.compute_metrics()
    rows = {r["layer"]: r for r in w.rows}
    assert set(rows) == {"raw", "smoothed"} and w.table.rowCount() == 2
    from skimage.metrics import structural_similarity

    for layer in (raw, smooth):
        a, b = layer.data[2].astype(np.float64), ref.data[2].astype(np.float64)
        rng = b.max() - b.min()
        assert rows[layer.name]["psnr"] == pytest.approx(10 * math.log10(rng**2 / np.mean((a - b) ** 2)), rel=1e-9)
        expected_ssim = structural_similarity(a, b, data_range=rng, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert rows[layer.name]["ssim"] == pytest.approx(expected_ssim, rel=1e-9)
    # smoothing removes noise: better on every metric (FRC resolution in µm: smaller is better)
    assert rows["smoothed"]["psnr"] > rows["raw"]["psnr"] and rows["smoothed"]["ssim"] > rows["raw"]["ssim"]
    assert "nm" in w.table.item(0, 3).text()


def test_an_frc_resolution_at_the_pixel_limit_says_so():
    """A curve that never falls below the threshold is reported at two pixels: a noisy input
    and its denoised result must not read as equally sharp."""
    from napari_emdiffuse._widgets.compare import frc_text

    assert frc_text(0.008, 0.004, "micrometer") == "≤ 8 nm (pixel limit)"
    assert frc_text(0.0123, 0.004, "micrometer") == "12.3 nm"


def test_metrics_on_a_region_result_use_the_matching_part_of_the_reference(layers, voxel):
    viewer, _, _, ref, _ = layers
    crop = viewer.add_image(ref.data[:, 20:60, 30:90] + 1.0, name="crop", scale=voxel, translate=(0, 20 * voxel[1], 30 * voxel[2]))
    w = _open(viewer)
    w.choose([crop])
    w.reference.select(ref)
    w.whole_volume.setChecked(True)
    w.compute_metrics()
    [row] = w.rows
    rng = float(ref.data[:, 20:60, 30:90].max() - ref.data[:, 20:60, 30:90].min())
    assert row["psnr"] == pytest.approx(20 * math.log10(rng), rel=1e-9)  # error of exactly 1 everywhere


def test_swipe_shows_left_and_right_without_touching_either(layers):
    viewer, raw, smooth, _, _ = layers
    before = raw.data.copy()
    w = _open(viewer)
    w.choose([raw, smooth])
    w.start_swipe()
    w.swipe.setValue(25)
    composite = np.asarray(w.swipe_layer.data[1])
    split = round(raw.data.shape[-1] * 0.25)
    np.testing.assert_array_equal(composite[:, :split], raw.data[1][:, :split])
    np.testing.assert_array_equal(composite[:, split:], smooth.data[1][:, split:])
    np.testing.assert_array_equal(raw.data, before)


def test_uncertain_regions_above_threshold_are_outlined_and_specks_left_out(make_napari_viewer, voxel):
    viewer = make_napari_viewer()
    std = np.zeros((2, 64, 64), np.float32)
    std[:, 8:24, 8:24] = 5.0  # a region of 256 of 4096 pixels per slice
    std[:, 50, 50] = std[:, 40, 10] = 5.0  # and two specks
    unc = viewer.add_image(std, name="em denoise uncertainty", scale=voxel, metadata={"emdiffuse": {"role": "uncertainty"}})
    w = _open(viewer)
    assert w.uncertainty.layer() is unc  # offered by itself
    w.threshold.setValue(1.0)
    share = w.highlight()
    mask = np.asarray(w.highlight_layer.data)
    assert mask[:, 10:22, 10:22].all()  # the region
    assert not mask[:, 50, 50].any() and not mask[:, 40, 10].any()  # not the specks
    assert 0.5 * 256 / 4096 < share < 2 * 256 / 4096
    assert tuple(w.highlight_layer.scale) == pytest.approx(voxel) and w.highlight_layer.contour > 0
