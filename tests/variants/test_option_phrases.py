"""A model's training-time options in words a user reads (the widgets' model line and
``emdiffuse models``), not option names: every variant, default and other values."""

from __future__ import annotations

import pytest

from napari_emdiffuse.errors import ConfigError
from napari_emdiffuse.variants import get_variant, plain_options
from napari_emdiffuse.variants.base import Variant

Z4 = "4x finer in z (k = 4): 3 new slices between each two input slices"


@pytest.mark.parametrize(
    "variant,options,phrases",
    [
        ("denoise", {}, []),  # every new denoiser is residual: nothing to say
        ("denoise", {"residual": False}, ["generates the clean image itself, not only the noise to remove"]),
        ("superres", {}, ["2x super-resolution (pixels 2 times finer in x and y)"]),
        ("superres", {"factor": 3}, ["3x super-resolution (pixels 3 times finer in x and y)"]),
        (
            "superres",
            {"factor": 2, "emdiffuse_original": True},
            ["2x super-resolution (pixels 2 times finer in x and y)", "run as the original EMDiffuse-r code runs it (imported weights)"],
        ),
        ("iso_i", {}, [Z4]),
        ("iso_i", {"factor": 2}, ["2x finer in z (k = 2): 1 new slice between each two input slices"]),
        ("iso_i", {"factor": 6, "emdiffuse_original": True}, [
            "6x finer in z (k = 6): 5 new slices between each two input slices",
            "run as the original vEMDiffuse-i code runs it (imported weights)",
        ]),
        ("iso_a", {}, [Z4, "averages its xz and yz views"]),
        ("iso_a", {"both_views": False}, [Z4, "from its xz view only"]),
        ("iso_a", {"factor": 12.5}, ["12.5x finer in z (k = 12.5): new slices between the input slices", "averages its xz and yz views"]),
        # the original fills gaps between xy slices: both views does not apply, so it is not said
        ("iso_a", {"factor": 8, "emdiffuse_original": True}, [
            "8x finer in z (k = 8): 7 new slices between each two input slices",
            "run as the original vEMDiffuse-a code runs it (imported weights)",
        ]),
    ],
)
def test_each_variant_words_its_options(variant, options, phrases):
    v = get_variant(variant)
    assert v.option_phrases(v.options(options)) == phrases
    stored = {"variant": variant, "variant_options": v.options(options).model_dump()}  # as a new model writes them
    assert plain_options(stored) == phrases


def test_a_stored_denoiser_without_the_residual_key_is_described_as_it_runs():
    """Models written before the option learnt the clean image itself (model_file.stored_preset)."""
    assert plain_options({"variant": "denoise", "variant_options": {}}) == ["generates the clean image itself, not only the noise to remove"]


def test_a_variant_without_its_own_words_names_each_option_and_value():
    """A variant added later shows its options before it words them (the base class's fallback)."""
    v = get_variant("superres")
    assert Variant.option_phrases(v, v.options({"factor": 4})) == ["factor 4", "emdiffuse original False"]


def test_a_bad_stored_option_is_refused_naming_it():
    with pytest.raises(ConfigError, match="factor"):
        plain_options({"variant": "superres", "variant_options": {"factor": 5}})
