"""Lesion colours, overlays, legend and the per-lesion metrics table."""
import math

import numpy as np
import torch
from matplotlib.figure import Figure

from codebase.data.idrid import LESIONS
from codebase.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from codebase.evaluation.visualize import (
    LESION_COLOURS,
    displayable,
    lesion_legend,
    lesion_metrics_table,
    overlay,
)


def test_every_lesion_has_its_own_colour():
    assert set(LESION_COLOURS) == set(LESIONS) and len(set(LESION_COLOURS.values())) == len(LESIONS)


def test_overlay_paints_only_mask_pixels_in_the_lesion_colour():
    image = np.full((4, 6, 3), 255, np.uint8)
    masks = np.zeros((5, 4, 6), np.uint8)
    masks[LESIONS.index("HE"), 1, 2] = 1
    out = overlay(image, masks, alpha=1.0)
    assert out.dtype == np.float32 and out.shape == (4, 6, 3)
    np.testing.assert_allclose(out[1, 2], LESION_COLOURS["HE"])
    untouched = np.ones((4, 6), bool)
    untouched[1, 2] = False
    assert (out[untouched] == 1.0).all()
    np.testing.assert_allclose(overlay(image / 255.0, {"HE": masks[1]}, alpha=1.0), out)


def test_displayable_undoes_the_normalisation():
    picture = torch.rand(3, 5, 7)
    normalised = (picture - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    np.testing.assert_allclose(displayable(normalised), picture.permute(1, 2, 0).numpy(), atol=1e-6)


def test_legend_names_the_lesions_shown():
    figure = Figure()
    legend = lesion_legend(figure, ("EX", "OD"))
    assert [text.get_text() for text in legend.get_texts()] == ["EX: Hard Exudates", "OD: Optic Disc"]


def test_metrics_table_has_a_row_per_lesion_and_dashes_for_undefined_values():
    results = {k: {"iou": 0.5, "dice": 2 / 3, "sensitivity": 1.0, "precision": math.nan, "aupr": 0.25}
               for k in LESIONS}
    results.update(mean_iou=0.5, mean_dice=2 / 3, mean_aupr=0.25)
    lines = lesion_metrics_table(results).splitlines()
    assert lines[0].split() == ["lesion", "iou", "dice", "sensitivity", "precision", "aupr"]
    assert len(lines) == 2 + len(LESIONS) + 1
    assert lines[2].split() == ["MA", "Microaneurysms", "0.500", "0.667", "1.000", "-", "0.250"]
    assert lines[-1].split() == ["mean", "0.500", "0.667", "-", "-", "0.250"]
