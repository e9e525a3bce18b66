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
