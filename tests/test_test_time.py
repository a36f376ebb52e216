"""Test-time views (selfsup.eval.test_time): the symmetric copies of a batch and the logits
averaged over them."""

import pytest
import torch
from torch import nn

from selfsup.eval.test_time import TEST_TIME_VIEWS, averaged_logits, symmetric_views


def _distinct(views):
    return len({tuple(v.flatten().tolist()) for v in views})


def test_views_are_the_identity_the_mirror_and_the_eight_symmetries():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    (only,) = symmetric_views(x, "none")
    assert only is x
    plain, mirror = symmetric_views(x, "hflip")
    torch.testing.assert_close(mirror[0, 0, 0], torch.tensor([2.0, 1.0, 0.0]))
    dihedral = symmetric_views(x, "dihedral")
    assert len(dihedral) == 8 and _distinct(dihedral) == 8  # a 3x3 ramp has no symmetry
    torch.testing.assert_close(dihedral[0], x)
    # the group is closed: the views of a turned image are the views of the image, reordered
    turned = symmetric_views(torch.rot90(x, 1, (-2, -1)), "dihedral")
    assert {tuple(v.flatten().tolist()) for v in turned} == {
        tuple(v.flatten().tolist()) for v in dihedral
    }


def test_averaged_logits_are_invariant_under_the_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        plain = averaged_logits(model, x, "none")
        torch.testing.assert_close(plain, model(x))
        base = averaged_logits(model, x, "dihedral")
        for g in symmetric_views(x, "dihedral"):
            torch.testing.assert_close(averaged_logits(model, g, "dihedral"), base)
        mirrored = averaged_logits(model, x.flip(-1), "hflip")
        torch.testing.assert_close(mirrored, averaged_logits(model, x, "hflip"))
        # a model that sees orientation gives different plain logits for a turned image
        assert not torch.allclose(model(torch.rot90(x, 1, (-2, -1))), plain)
        expected = torch.stack([model(v) for v in symmetric_views(x, "dihedral")]).mean(0)
        torch.testing.assert_close(base, expected)


def test_bad_views_are_refused_with_their_name():
    x = torch.zeros(1, 1, 4, 6)
    with pytest.raises(ValueError, match="needs square images, got 4x6"):
        symmetric_views(x, "dihedral")
    assert len(symmetric_views(x, "hflip")) == 2  # mirroring needs no square
    with pytest.raises(ValueError, match=r"test_time_views must be one of none, hflip, dihedral"):
        symmetric_views(x, "rot")
    assert TEST_TIME_VIEWS[0] == "none"  # the default everywhere
