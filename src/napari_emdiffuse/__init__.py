"""napari-emdiffuse: diffusion-model enhancement of electron microscopy images (EMDiffuse)."""

__version__ = "0.1.0"
