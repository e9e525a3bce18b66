"""A grid cell's caption with a text of its own, so that Compare fits a long name to its cell
without renaming the layer.

napari (0.9) captions a grid cell with the layer's name overlay, which draws ``layer.name`` and
nothing else, and offers no public way to put other text in one cell. Renaming the layer meanwhile
leaked the short name into everything that read it (result names, the ``source_layer`` an Enhance
run records, Compare's own outlines and metrics) and lost the name to a layer added meanwhile
under it. So the caption is a layer overlay of our own instead: a :class:`LayerNameOverlay` with
a ``text`` (napari places, sizes and tiles it in the layer's cell beside its colour bar as it does
the name overlay), drawn by a subclass of napari's own name-overlay visual that shows that text.

This reaches into napari's private parts: ``layer._overlays`` (where napari keeps a layer's
overlays; a new entry is drawn in the layer's cell) and the overlay-to-visual table of
``napari._vispy.utils.visual``. :func:`caption_overlay` checks they are there; where they are
not (another napari), or adding the overlay fails, :func:`show_caption` returns False and the
caller shows napari's own caption, the layer's full name, which a long name overflows. The
test ``test_grid_captions_fit_their_cells_at_1366_px`` reads what the canvas draws, so a napari
that changes these parts fails it rather than falling back unnoticed.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

#: the key of Compare's caption among a layer's overlays
KEY = "emdiffuse_caption"

_caption_class: Any = None  # the overlay model, once registered; False: napari lacks the parts


def caption_overlay() -> Any:
    """The caption overlay's model class, its visual registered with napari; None where this
    napari lacks the parts it needs."""
    global _caption_class
    if _caption_class is None:
        _caption_class = _register() or False
    return _caption_class or None


def _register() -> Any:
    try:
        from napari._vispy.overlays.text import VispyLayerNameOverlay
        from napari._vispy.utils.visual import overlay_to_visual
        from napari.components.overlays import LayerNameOverlay
    except ImportError:
        return None
    if not (
        isinstance(overlay_to_visual, dict)
        and overlay_to_visual.get(LayerNameOverlay) is VispyLayerNameOverlay
        and callable(getattr(VispyLayerNameOverlay, "_connect_events", None))
    ):
        return None

    class CaptionOverlay(LayerNameOverlay):  # type: ignore[misc, valid-type]
        """A layer's caption in its grid cell: ``text`` instead of the layer's name (drawn as
        napari's name overlay would be, were this class unknown to it)."""

        text: str = ""

    class VispyCaptionOverlay(VispyLayerNameOverlay):  # type: ignore[misc, valid-type]
        def _connect_events(self) -> None:
            self.overlay.events.text.connect(self._on_text_change)

        def _on_text_change(self) -> None:
            self.node.text = self.overlay.text
            self._on_position_change()

    overlay_to_visual[CaptionOverlay] = VispyCaptionOverlay
    return CaptionOverlay


def show_caption(layer: Any, text: str, position: Any, points: float) -> bool:
    """Caption ``layer``'s cell ``text`` at ``position`` in ``points``; False where this napari
    cannot (nothing is left added then: a caption of Compare's added to ``layer`` before adding
    one failed, for this or another layer, is taken off, so that napari's shows alone)."""
    global _caption_class
    cls, overlays = caption_overlay(), getattr(layer, "_overlays", None)
    if cls is None or not isinstance(overlays, MutableMapping):
        hide_caption(layer)
        return False
    caption = overlays.get(KEY)
    try:
        if caption is None:
            overlays[KEY] = cls(text=text, position=position, font_size=points, visible=True)
        else:
            caption.position, caption.font_size, caption.text = position, points, text
    except Exception:  # noqa: BLE001 - napari drew it otherwise than this module expects: its own caption then
        hide_caption(layer)
        _caption_class = False
        return False
    return True


def hide_caption(layer: Any) -> None:
    """Take Compare's caption off ``layer`` (nothing if it has none)."""
    overlays = getattr(layer, "_overlays", None)
    if isinstance(overlays, MutableMapping) and KEY in overlays:
        del overlays[KEY]
