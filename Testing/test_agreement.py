"""The agreement map (engine/agreement.py) on real images: one where an image meets itself and has
contrast, lower where a copy is shifted, on the fixed grid, for intensity and diffusion-feature similarities
(a small random-weight ADM stands in for the real weights, which only the numbers' meaning depends on)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from DiffusionRegistrationLib.engine.agreement import agreement_map
from DiffusionRegistrationLib.core.image import Image

SMALL_ADM = {"similarity": "diffusion", "similarity_params": {"extractor": {"backbone": "adm-small-random", "seed": 1},
                                                               "cache": False}}


def shifted(image: Image, voxels: float) -> Image:
    return Image(ndimage.shift(image.array, [voxels] * image.array.ndim, order=1), image.grid)


@pytest.mark.parametrize("config", [{"similarity": "lncc"}, {"similarity": "mind"}, SMALL_ADM],
                         ids=["lncc", "mind", "diffusion"])
def test_a_slice_agrees_with_itself_and_less_with_a_shifted_copy(t1_slice, config):
    inside = t1_slice.array > 0.2 * t1_slice.array.max()
    same = agreement_map(t1_slice, t1_slice, config)
    off = agreement_map(t1_slice, shifted(t1_slice, 3.0), config)
    assert same.grid == t1_slice.grid and same.array.shape == t1_slice.array.shape
    assert same.array.dtype == np.float32
    assert np.median(same.array[inside]) > 0.99
    assert off.array[inside].mean() < same.array[inside].mean() - 0.05


def test_diffusion_agreement_of_a_volume_is_computed_slice_by_slice_on_its_grid(colin_small):
    same = agreement_map(colin_small, colin_small, SMALL_ADM)
    assert same.array.shape == colin_small.array.shape and same.grid == colin_small.grid
    inside = colin_small.array > 0.2 * colin_small.array.max()
    assert np.median(same.array[inside]) > 0.99
