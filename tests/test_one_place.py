"""Facts written once (issue 16 item 3): a second copy drifting from the first fails here."""

from pathlib import Path

import pytest

from napari_emdiffuse.arg_types import variant_option
from napari_emdiffuse.errors import InputError

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_emdiffuse"


def test_variant_options_are_parsed_in_one_place_for_every_command():
    assert variant_option("factor=2") == ("factor", 2) and variant_option("mode=fast") == ("mode", "fast")
    assert variant_option("residual=true") == ("residual", True)
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        variant_option("factor")
    # train (cli.py) and prepare (data/cli_commands.py) both call it; no command splits KEY=VALUE itself
    users = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if "variant_option(" in p.read_text()}
    assert {"cli.py", "data/cli_commands.py"} <= users
    copies = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if "expected KEY=VALUE" in p.read_text()]
    assert copies == ["arg_types.py"]


def test_the_samplers_a_preset_may_name_are_the_samplers_there_are():
    from typing import get_args

    from napari_emdiffuse.config import SamplerName
    from napari_emdiffuse.engine.samplers import SAMPLERS

    assert set(get_args(SamplerName)) == set(SAMPLERS)


@pytest.mark.parametrize("prediction", ["edm", "v", "eps"])
def test_the_loss_trains_the_network_for_the_forward_that_runs_it(prediction):
    """One ``scalings`` serves the loss and the forward: the network input the loss gives and the
    target it asks for are exactly what the denoiser feeds the network and turns back into x0.
    A second copy of a parameterisation in either place drifts and fails here."""
    import torch

    from napari_emdiffuse.config import DiffusionConfig
    from napari_emdiffuse.engine.diffusion import Denoiser, DiffusionProcess

    proc = DiffusionProcess(DiffusionConfig(prediction=prediction, sigma_data=0.4 if prediction == "edm" else None))
    x0 = 0.5 * torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    seen = {}

    def record(x_in, cond, c_noise):
        seen["x_in"], seen["out"] = x_in, torch.zeros_like(x_in, requires_grad=True)
        return seen["out"]

    proc.loss(record, x0, x0, generator=torch.Generator().manual_seed(1)).backward()
    target = -seen["out"].grad * x0.numel() / 2  # d/dp mean((p - target)^2) at p = 0
    g = torch.Generator().manual_seed(1)  # the loss's draws again: timesteps, then noise
    t = torch.randint(0, proc.schedule.timesteps, (x0.shape[0],), generator=g)
    sigma = proc.schedule.sigmas[t].float()
    x = x0 + sigma[:, None, None, None] * torch.randn(x0.shape, generator=g)

    def answer(x_in, cond, c_noise):
        torch.testing.assert_close(x_in, seen["x_in"], rtol=1e-5, atol=1e-6)  # the same network input
        return target

    torch.testing.assert_close(Denoiser(answer, prediction, proc.cfg.sigma_data)(x, sigma, x0), x0, rtol=1e-4, atol=1e-4)


def test_a_model_is_found_by_name_in_one_place(tmp_path):
    """predict, train --from-model, export and the demo find a model through ``models.find_model``;
    only listings read the bundled models themselves (a second lookup was how --from-model failed)."""
    from napari_emdiffuse.errors import ModelFileError
    from napari_emdiffuse.models import bundled_models, find_model

    bundled = bundled_models()
    assert bundled and all(find_model(name) == folder for name, folder in bundled.items())
    assert find_model(tmp_path) == tmp_path
    with pytest.raises(ModelFileError, match=r"no-such-model: no such model folder, and no bundled model .*emdiffuse-n"):
        find_model("no-such-model")
    listings = {"models.py", "cli.py", "_widgets/registry.py"}  # `emdiffuse models`, the widgets' model list
    readers = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if "bundled_models()" in p.read_text()}
    assert readers <= listings, f"looks models up itself: {sorted(readers - listings)}"
    cli = (SRC / "cli.py").read_text()
    assert cli.count("bundled_models()") == 1 and "for name, folder in sorted(bundled_models().items())" in cli
    lookups = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if "find_model(" in p.read_text() or "resolve_model(" in p.read_text()}
    assert {"cli.py", "bioimageio_export.py", "demo.py"} <= lookups


def test_the_memory_budget_is_one_function_imported_at_the_top():
    """The readers and the model files ask ``data.memory`` how much memory one thing may take;
    model_file imports it at its top, not through the readers inside a function."""
    import ast

    from napari_emdiffuse.data import io, memory
    from napari_emdiffuse import model_file

    assert io.memory_budget is memory.memory_budget is model_file.memory_budget
    sources = {p.relative_to(SRC).as_posix(): p.read_text() for p in SRC.rglob("*.py")}
    assert [name for name, text in sources.items() if "def memory_budget(" in text] == ["data/memory.py"]
    assert [name for name, text in sources.items() if "SC_PHYS_PAGES" in text] == ["data/memory.py"]
    tree = ast.parse(sources["model_file.py"])
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
    nested = {n.module for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f) if isinstance(n, ast.ImportFrom)}
    assert "data.memory" in top and not {m for m in nested if m and m.startswith("data")}


def test_events_are_dispatched_on_their_types():
    """A job's consumers (the CLI's drive, the widgets, calibrate over predict) ``match`` on the
    event classes of jobs/events.py: a dispatch on ``kind`` strings or values would miss a renamed
    or new event without failing anywhere."""
    import re

    on_kind = re.compile(r"\b(ev|event)\.kind\b|\.kind\.value|getattr\(\w+, \"kind\"|(?<!default=)\bKind\.[A-Z]+")
    offenders = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if on_kind.search(p.read_text())]
    assert not offenders, f"dispatch on event kinds: {offenders}"
    matchers = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if re.search(r"^\s+case (Progress|PredictResult|Loss)\(", p.read_text(), re.M)}
    assert {"cli_jobs.py", "_widgets/_common.py", "_widgets/enhance.py", "_widgets/train.py", "jobs/calibrate.py"} <= matchers
