"""napari dock widgets: Enhance, Train / fine-tune, Compare and Presets (one per module).

They drive the headless jobs (:mod:`napari_emdiffuse.jobs`) in worker threads and turn the jobs'
events into progress bars, plots and layers; torch and the jobs are imported only when a widget
runs something, so napari starts fast.
"""
