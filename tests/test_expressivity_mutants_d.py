"""Input checks and values of the Gaussian-radius helper of the expressivity module."""
import math

import pytest

from lorabook.expressivity import gaussian_radius


def test_gaussian_radius_accepts_the_largest_dimension_and_rejects_the_next():
    """D may be as large as 10**6 (radius std·(1000 + tail)); 10**6 + 1 is rejected naming D and the bound."""
    assert gaussian_radius(10**6) == pytest.approx(1000.0 + 8.0)
    with pytest.raises(ValueError, match=r"^D=1000001 is out of range: it must lie in \[1, 1000000\]$"):
        gaussian_radius(10**6 + 1)
    with pytest.raises(ValueError, match=r"^D=0 is out of range"):
        gaussian_radius(0)


def test_gaussian_radius_names_a_non_positive_std_or_tail():
    """std and tail must be positive; the error message names the offending argument."""
    assert gaussian_radius(9, std=0.5, tail=2.0) == pytest.approx(0.5 * (math.sqrt(9) + 2.0))
    with pytest.raises(ValueError, match=r"^std must be a positive finite number, got 0$"):
        gaussian_radius(4, std=0)
    with pytest.raises(ValueError, match=r"^tail must be a positive finite number, got -1$"):
        gaussian_radius(4, tail=-1)
