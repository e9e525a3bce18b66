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

    assert frc_text(0.008, 0.004, "micrometer") == "≤ 8 nm\n(pixel limit)"
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


LONG = "2024-03-11_mouse_cortex_FIBSEM_stack_aligned_8bit"


def test_result_names_cut_a_long_input_name_in_the_middle():
    """The GUI walk at 1366 px: 'LONG: error bound (90 %) [grey values]' was cut off in the layer
    list and the grid, so a user could not tell the results apart. The input's name keeps its
    start and end; what the layer shows and '(partial)' are kept whole."""
    from napari_emdiffuse._widgets.layers import SOURCE_CHARS, result_name

    assert result_name("em", "estimate") == "em: estimate"
    assert result_name("ssTEM noisy (simulated)", "estimate") == "ssTEM noisy (simulated): estimate"
    short = result_name(LONG, "estimate")
    assert short == "2024-03-11_…aligned_8bit: estimate" and len(short.split(": ")[0]) == SOURCE_CHARS
    assert result_name(LONG, "samples", partial=True) == "2024-03-11_…aligned_8bit (partial): samples"


def _laptop(make_napari_viewer):
    """A viewer shown at 1366 x 768 with the Compare dock, as in the walk-through."""
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    w = _open(viewer)
    for _ in range(5):
        QApplication.processEvents()
    return viewer, w


def _caption(viewer, layer):
    """What napari draws as a layer's caption in its grid cell, and where: (text, left, right) in
    screen pixels, and its size in points. Compare's own caption, and no other: napari's is hidden."""
    from napari_emdiffuse._widgets.captions import KEY

    overlay = layer._overlays[KEY]
    visuals = viewer.window._qt_viewer.canvas._layer_overlay_to_visual[layer]
    caption = visuals[overlay]
    assert caption.node.visible and caption.node.parent is not None
    assert not layer.name_overlay.visible and not any(v.node.visible for o, v in visuals.items() if o is layer.name_overlay)
    left = float(caption.node.transform.translate[0])
    return caption.node.text, left, left + caption.x_size, overlay.font_size


def _uncaptioned(layer):
    from napari_emdiffuse._widgets.captions import KEY

    return KEY not in layer._overlays


def test_grid_captions_fit_their_cells_at_1366_px(make_napari_viewer, isbi, voxel):
    """The error bound's caption (beside its colour bar) and a long result name were cut off in
    the 2 x 2 grid, the bound's at its start (docs/screenshots/04_compare.png); each now fits its
    cell, a name too long even at 7 pt shortened in its input's part, what it shows kept (its
    units in brackets give way rather than the whole input name).
    The layers keep their names (the caption is Compare's own); "One view" puts napari's captions
    back as they were."""
    from qtpy.QtWidgets import QApplication

    from napari_emdiffuse._widgets.layers import INTENSITY_UNIT, result_name

    viewer, w = _laptop(make_napari_viewer)
    data = isbi[:2].astype(np.float32)
    names = ["em", result_name(LONG, "estimate"), result_name(LONG, f"error bound (90 %) [{INTENSITY_UNIT}]"), f"{LONG}_reference"]
    layers = [viewer.add_image(data, name=name, scale=voxel) for name in names]
    bound = layers[2]
    bound.colormap = "inferno"
    bound.colorbar.visible = True
    bound.name_overlay.position = bound.colorbar.position  # as Enhance shows an error bound
    w.choose(layers)
    w.side_by_side()
    for _ in range(5):
        QApplication.processEvents()
    assert viewer.grid.shape == (2, 2)
    cell = viewer.canvas.size[1] / viewer.grid.shape[1]
    captions = {}
    for layer in layers:
        text, left, right, points = captions[layer.name] = _caption(viewer, layer)
        assert 0 <= left and right <= cell, (text, left, right, cell)
    assert [lyr.name for lyr in layers] == names  # never renamed
    text, *_, points = captions[names[2]]
    # too narrow for both: the input's name (cut in its middle) before the units in brackets
    assert points == 7 and text.endswith(": error bound (90 %)") and text != names[2]
    assert text.startswith("2024-0") and "…" in text
    assert captions["em"][0] == "em" and captions["em"][3] == 10
    w.restore_view()
    assert [lyr.name for lyr in layers] == names and all(_uncaptioned(lyr) for lyr in layers)
    assert [lyr.name_overlay.font_size for lyr in layers] == [10] * 4 and bound.name_overlay.position == bound.colorbar.position
    assert not any(lyr.name_overlay.visible for lyr in layers)  # as before "Side by side"


def test_fit_name_keeps_what_a_layer_shows_and_cuts_its_input_in_the_middle():
    from napari_emdiffuse._widgets.layers import fit_name

    name = "2024-03-11_…aligned_8bit (partial): error bound (90 %) [grey values]"
    assert fit_name(name, lambda text: True) == name
    assert fit_name(name, lambda text: len(text) <= 55) == "2024-…_8bit (partial): error bound (90 %) [grey values]"
    assert fit_name(name, lambda text: False) == "… (partial): error bound (90 %) [grey values]"
    assert fit_name(LONG, lambda text: len(text) <= 20) == "2024-03-1…igned_8bit"
    # a 2 x 2 grid at 1366 px: the input's name, not the units the colour bar shows, where only one fits
    assert fit_name(name, lambda text: len(text) <= 40) == "2024…_8bit (partial): error bound (90 %)"
    assert fit_name("em: error bound (90 %) [grey values]", lambda text: len(text) <= 30) == "em: error bound (90 %)"
    assert fit_name(name, lambda text: len(text) <= 30) == "… (partial): error bound (90 %) [grey values]"


def test_metric_table_fits_its_width_at_1366_px(make_napari_viewer, isbi, voxel):
    """The table needed a horizontal scroll bar in the dock at 1366 px: every metric is now in
    view, a long layer name cut in its middle (its full name in the tooltip)."""
    from qtpy.QtWidgets import QApplication

    viewer, w = _laptop(make_napari_viewer)
    clean = isbi[:1].astype(np.float32)
    ref = viewer.add_image(clean, name=f"{LONG}_reference", scale=voxel)
    noisy = viewer.add_image(clean + np.random.default_rng(0).normal(0, 25, clean.shape).astype(np.float32), name=LONG, scale=voxel)
    result = viewer.add_image(clean + 1, name=f"{LONG[:24]}: estimate", scale=voxel)
    w.choose([noisy, result])
    w.reference.select(ref)
    w.compute_metrics()
    for _ in range(5):
        QApplication.processEvents()
    table = w.table
    assert table.rowCount() == 2
    assert table.horizontalHeader().length() <= table.viewport().width()  # no horizontal scrolling
    metrics = table.fontMetrics()
    for i in range(table.rowCount()):
        for j in range(1, table.columnCount()):
            widest = max(metrics.horizontalAdvance(line) for line in table.item(i, j).text().splitlines())
            assert widest <= table.columnWidth(j), (table.item(i, j).text(), table.columnWidth(j))
    assert table.item(0, 0).toolTip() == LONG


def test_status_follows_the_view_mode(layers):
    """After "One view" the status still said "Side by side: ..."."""
    viewer, raw, smooth, _, _ = layers
    w = _open(viewer)
    w.choose([raw, smooth])
    w.side_by_side()
    assert w.status.text().startswith("Side by side")
    w.restore_view()
    assert w.status.text().startswith("One view") and "Side by side:" not in w.status.text()


def test_the_layer_list_shows_both_ends_of_a_long_name(make_napari_viewer, isbi):
    """A long name in Compare's list is cut in its middle, keeping what tells results apart (the
    end), with the full name and what it was made from in its tooltip."""
    viewer = make_napari_viewer()
    viewer.add_image(isbi[:1], name=f"{LONG[:24]}: estimate", metadata={"emdiffuse": {"role": "enhanced", "source_layer": LONG}})
    w = _open(viewer)
    from qtpy.QtCore import Qt

    assert w.layer_list.textElideMode() == Qt.TextElideMode.ElideMiddle
    assert w.layer_list.item(0).toolTip() == f"{LONG[:24]}: estimate\nmade from {LONG}"


def test_the_layer_list_follows_a_rename(layers):
    """A layer the user renames shows its new name in Compare's list (it kept the old one), and
    stays ticked."""
    viewer, raw, smooth, _, _ = layers
    w = _open(viewer)
    w.choose([raw, smooth])
    smooth.name = "smoothed, sigma 2"
    names = [w.layer_list.item(i).text() for i in range(w.layer_list.count())]
    assert "smoothed, sigma 2" in names and smooth.name == "smoothed, sigma 2"
    item = w.layer_list.item(names.index("smoothed, sigma 2"))
    assert item.toolTip() == "smoothed, sigma 2"
    assert w.chosen_layers() == [raw, smooth]


def test_one_view_after_a_layer_was_deleted_side_by_side_touches_only_the_layers_it_saved(layers):
    """A layer deleted while side by side: a resize fits the others' captions, and "One view"
    restores theirs and leaves a layer added since as it is. (Captions are kept by layer, not by
    id(), which a new layer may reuse; a test cannot force that reuse, so this one checks the
    deletion path around it.)"""
    from qtpy.QtWidgets import QApplication

    viewer, raw, smooth, ref, _ = layers
    w = _open(viewer)
    w.choose([raw, smooth, ref])
    w.side_by_side()
    viewer.layers.remove(smooth)
    QApplication.processEvents()
    new = viewer.add_image(np.zeros((8, 8), np.float32), name="new")
    new.name_overlay.position, new.name_overlay.font_size = "bottom_left", 13.0
    viewer.window._qt_window.resize(1000, 700)  # the captions are fitted again: the deleted layer is skipped
    QApplication.processEvents()
    w.restore_view()
    assert (new.name_overlay.position, new.name_overlay.font_size) == ("bottom_left", 13.0)
    assert raw.name_overlay.font_size == ref.name_overlay.font_size != 13.0
    assert w.status.text().startswith("One view")


def test_a_layer_removed_side_by_side_is_let_go_at_once_and_the_grid_closes_up(make_napari_viewer, isbi, voxel):
    """Review: Compare's saved captions (and the swipe) kept a layer removed from the viewer, and
    its data, alive until "One view". A removed layer now gets its own look back and is let go
    at once; the grid closes up around the others, and closing the panel gives the rest
    theirs back."""
    import gc
    import weakref

    from qtpy.QtWidgets import QApplication

    from napari_emdiffuse._widgets.layers import result_name

    viewer, w = _laptop(make_napari_viewer)
    data = isbi[:2].astype(np.float32)
    raw, smooth, ref = (viewer.add_image(data + k, name=name, scale=voxel) for k, name in enumerate(("raw", "smoothed", "reference")))
    bound = viewer.add_image(data, name=result_name(LONG, "error bound (90 %) [grey values]"), scale=voxel)
    full = bound.name
    w.choose([raw, smooth])
    w.start_swipe()
    w.choose([raw, smooth, ref, bound])
    w.side_by_side()
    QApplication.processEvents()
    assert bound.name == full and _caption(viewer, bound)[0] != full and viewer.grid.shape == (2, 2)
    viewer.layers.remove(bound)
    QApplication.processEvents()
    assert bound.name == full and bound.visible and not bound.name_overlay.visible and _uncaptioned(bound)  # as it was before
    gone = weakref.ref(smooth)
    viewer.layers.remove(smooth)
    del smooth
    QApplication.processEvents()
    gc.collect()
    assert gone() is None  # nothing keeps it, nor its data
    assert viewer.grid.shape == (1, 2) and not w.swipe.isEnabled()
    w.swipe.setValue(10)  # the swipe's other layer is gone: nothing to redraw, no error
    assert [lyr.visible for lyr in (raw, ref)] == [True, True]
    viewer.window.remove_dock_widget(w)
    QApplication.processEvents()
    assert not viewer.grid.enabled and all(lyr.visible for lyr in viewer.layers)


def _settle():
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()


def test_side_by_side_leaves_every_name_to_enhance_outlines_and_metrics(make_napari_viewer, isbi, voxel, tiny_model):
    """Review (B1): Compare renamed a layer to fit its caption, and whatever read the name then
    kept the short one: Enhance named its results after it and recorded it as their source (and
    a large result's store), Compare's outlines and metric rows kept it after "One view". The
    caption is now Compare's own: every layer keeps its full name while side by side."""
    from napari_emdiffuse._widgets.layers import SOURCE_CHARS, elide_middle, result_name
    from napari_emdiffuse._widgets.registry import MODELS

    viewer, w = _laptop(make_napari_viewer)
    full = "_".join([LONG] * 3)
    clean = isbi[:1, :32, :32].astype(np.float32)
    em = viewer.add_image(clean + np.random.default_rng(0).normal(0, 25, clean.shape).astype(np.float32), name=full, scale=voxel)
    ref = viewer.add_image(clean, name="reference", scale=voxel)
    w.choose([em, ref])
    w.side_by_side()
    _settle()
    assert em.name == full and _caption(viewer, em)[0] != full  # shown shortened, named in full

    MODELS.add(tiny_model, "trained")
    _, enhance = viewer.window.add_plugin_dock_widget("napari-emdiffuse", "Enhance")
    enhance.image.select(em)
    enhance.steps.setValue(1)
    plan = enhance.plan()
    assert plan.name == full and plan.source_info == {"source_layer": full}  # the store is named from plan.name
    enhance.run()
    enhanced, bound = enhance.result_layers
    assert enhanced.name == result_name(full, "estimate") and bound.name.startswith(result_name(full, "error bound"))
    assert enhanced.metadata["emdiffuse"]["source_layer"] == bound.metadata["emdiffuse"]["source_layer"] == full
    _settle()

    names = {id(lyr): lyr.name for lyr in (em, enhanced, bound)}
    w.choose([em, enhanced, bound])
    w.side_by_side()
    _settle()
    assert {id(lyr): lyr.name for lyr in (em, enhanced, bound)} == names and _caption(viewer, em)[0] != full
    w.reference.select(ref)
    w.compute_metrics()
    w.uncertainty.select(bound)
    w.threshold.setValue(0.0)
    w.highlight()
    outline = f"{elide_middle(bound.name, SOURCE_CHARS)} above 0"
    assert w.highlight_layer.name == outline
    w.restore_view()
    _settle()
    assert {id(lyr): lyr.name for lyr in (em, enhanced, bound)} == names and ref.name == "reference"
    assert [r["layer"] for r in w.rows] == [full, enhanced.name, bound.name]
    assert w.table.item(0, 0).toolTip() == full and w.highlight_layer.name == outline


def test_a_name_given_side_by_side_is_fitted_and_a_new_layer_of_the_same_name_is_suffixed(make_napari_viewer, isbi, voxel):
    """Review (D, B2): a long name the user typed while side by side overflowed its cell until the
    window was resized, and a layer added meanwhile under a layer's full name took it (the
    original became "name [1]" on "One view"). The caption now follows the name as it is given,
    and napari's "[1]" goes to the newer layer, as it does outside Compare."""
    viewer, w = _laptop(make_napari_viewer)
    data = isbi[:1].astype(np.float32)
    em, ref = (viewer.add_image(data, name=name, scale=voxel) for name in ("em", "reference"))
    w.choose([em, ref])
    w.side_by_side()
    _settle()
    assert _caption(viewer, em)[0] == "em"
    full = "_".join([LONG] * 3)
    em.name = full
    _settle()
    text, left, right, points = _caption(viewer, em)
    cell = viewer.canvas.size[1] / viewer.grid.shape[1]
    assert points == 7 and "…" in text and text != full and 0 <= left and right <= cell, (text, right, cell)
    assert em.name == full
    em.name = "em 2"  # and back to a short one: shown whole, in napari's size
    _settle()
    assert _caption(viewer, em)[0::3] == ("em 2", 10)
    em.name = full
    newer = viewer.add_image(data, name=full, scale=voxel)
    assert newer.name == f"{full} [1]"
    w.restore_view()
    assert (em.name, ref.name, newer.name) == (full, "reference", f"{full} [1]")
    assert _uncaptioned(em) and _uncaptioned(ref)


def _long_name_beside_a_short_one(make_napari_viewer, isbi, voxel):
    """Compare side by side at 1366 px: a layer with a name too long for its cell beside one with
    a short name. Returns the viewer, the widget, their data, the long name and the two layers."""
    viewer, w = _laptop(make_napari_viewer)
    data = isbi[:1].astype(np.float32)
    full = "_".join([LONG] * 3)
    em, ref = (viewer.add_image(data, name=name, scale=voxel) for name in (full, "reference"))
    w.choose([em, ref])
    w.side_by_side()
    _settle()
    return viewer, w, data, full, em, ref


def test_when_adding_a_caption_fails_mid_session_no_layer_shows_two(make_napari_viewer, isbi, voxel, monkeypatch):
    """Drawing Compare's caption fails for a layer added to the grid later (review s16 N4): the
    layers captioned before keep no stale caption of Compare's beside napari's, then or when
    fitted again; napari's caption shows the full name, alone, in every cell."""
    from napari._vispy.utils.visual import overlay_to_visual

    from napari_emdiffuse._widgets import captions

    monkeypatch.setattr(captions, "_caption_class", captions._caption_class)  # restored after the test
    cls = captions.caption_overlay()
    assert cls is not None
    viewer, w, data, full, em, ref = _long_name_beside_a_short_one(make_napari_viewer, isbi, voxel)
    assert not _uncaptioned(em) and not em.name_overlay.visible

    class Failing(overlay_to_visual[cls]):
        def __init__(self, *args, **kwargs):
            raise RuntimeError("drawing failed")

    monkeypatch.setitem(overlay_to_visual, cls, Failing)
    third = viewer.add_image(data, name="third", scale=voxel)
    w.choose([em, ref, third])
    w.side_by_side()
    _settle()
    for refit in (False, True):
        if refit:
            w._fit_captions()  # a resize or a rename
            _settle()
        for layer in (em, ref, third):
            assert _uncaptioned(layer) and layer.name_overlay.visible, (layer.name, refit)
        assert em.name == full and em.name_overlay.font_size == 7
    w.restore_view()
    assert all(_uncaptioned(layer) for layer in (em, ref, third)) and em.name == full


def test_where_napari_cannot_show_compares_caption_its_own_shows_the_full_name(make_napari_viewer, isbi, voxel, monkeypatch):
    """A napari without the parts Compare's caption needs (:mod:`.captions`): napari's own caption
    shows the full name in the smallest size, overflowing its cell, and nothing is renamed."""
    from napari_emdiffuse._widgets import captions

    monkeypatch.setattr(captions, "_caption_class", False)
    viewer, w, data, full, em, ref = _long_name_beside_a_short_one(make_napari_viewer, isbi, voxel)
    assert em.name == full and _uncaptioned(em) and em.name_overlay.visible and em.name_overlay.font_size == 7
    assert ref.name_overlay.visible and ref.name_overlay.font_size == 10
    w.restore_view()
    assert em.name == full and not em.name_overlay.visible and em.name_overlay.font_size == 10
