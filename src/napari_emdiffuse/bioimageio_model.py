"""The network of a bioimage.io model package exported by napari-emdiffuse (its architecture
source, copied into the package, so it imports the plugin by absolute name).

A diffusion model is a sampler around a network, so the "model" bioimage.io runs is the whole
deterministic prediction: ``samples`` samples of ``steps`` sampler steps from seed ``seed``,
exactly as ``emdiffuse predict`` draws them, returning their mean and standard deviation. The
input arrives scaled to 0-1 by the package's preprocessing (the 0.1 and 99.9 percentiles, the
plugin's own normalisation); the outputs are in the same 0-1 units.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class EMDiffusePrediction(torch.nn.Module):
    """``forward(image)`` -> ``(mean, std)`` for a ``(batch, 1, y, x)`` image in 0-1 units."""

    def __init__(self, model_json: dict[str, Any], steps: int, samples: int, seed: int) -> None:
        super().__init__()
        from napari_emdiffuse.model_file import Model

        self.model = Model.from_json(model_json)
        self.network = self.model.network  # registered here, so the state dict is the network's
        self.sample = self.model.preset.with_overrides({"sample": {"steps": steps, "samples": samples, "seed": seed}}).sample

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        from napari_emdiffuse.data.normalise import Normaliser
        from napari_emdiffuse.jobs.predict import run_predict

        means, stds = [], []
        for plane in image[:, 0]:
            result = run_predict(
                self.model, plane.detach().cpu().numpy().astype(np.float32), sample=self.sample,
                normaliser=Normaliser(0.0, 1.0), device=image.device.type,
            )  # fmt: skip
            means.append(torch.from_numpy(np.asarray(result.mean, np.float32)))
            stds.append(torch.from_numpy(np.asarray(result.std, np.float32)))
        return torch.stack(means)[:, None].to(image.device), torch.stack(stds)[:, None].to(image.device)
