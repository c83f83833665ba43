"""Synthetic IDRiD generator: determinism, grading rules, masks that match the drawing, CLI."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from codebase.data import idrid, synthetic
from codebase.data.images import read_size
from codebase.data.synthetic import (
    ensure_dataset,
    generate,
    macular_edema_risk,
    render,
    retinopathy_grade,
)

TINY = {"size": (96, 64), "seg_train": 2, "seg_test": 1, "grade_train": 5, "grade_test": 2}


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    first = tree_digest(generate(tmp_path / "a", seed=3, **TINY))
    assert first == tree_digest(generate(tmp_path / "b", seed=3, **TINY))
    assert first != tree_digest(generate(tmp_path / "c", seed=4, **TINY))


def test_tree_has_requested_counts_and_sizes(tmp_path):
    root = generate(tmp_path / "data", seed=1, **TINY)
    assert len(idrid.segmentation_records(root, "train")) == 2
    assert [r.name for r in idrid.segmentation_records(root, "test")] == ["IDRiD_03"]
    assert len(idrid.grading_records(root, "train")) == 5 and len(idrid.grading_records(root, "test")) == 2
    assert read_size(idrid.grading_records(root, "test")[0].image_path) == (96, 64)
    assert not list(root.glob(".synthetic-*"))  # staging folder removed
    assert idrid.check(root)[1] == []


def test_grading_rules():
    assert retinopathy_grade({}) == 0
    assert retinopathy_grade({"MA": 4}) == 1
    assert retinopathy_grade({"MA": 4, "EX": 3}) == 2
    assert retinopathy_grade({"MA": 4, "SE": 1}) == 2
    assert retinopathy_grade({"HE": synthetic.SEVERE_HAEMORRHAGES - 1}) == 2
    assert retinopathy_grade({"HE": synthetic.SEVERE_HAEMORRHAGES}) == 3
    assert retinopathy_grade({"MA": 2, "PRH": 1}) == 4
    assert retinopathy_grade({"HE": 20, "NV": 1}) == 4
    assert macular_edema_risk([]) == 0
    assert macular_edema_risk([1.2, 3.0]) == 1
    assert macular_edema_risk([3.0, 0.4]) == 2
    assert macular_edema_risk([1.0]) == 2


@pytest.mark.parametrize("rg, mer", [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (3, 0), (3, 2), (4, 1), (4, 2)])
def test_render_reaches_its_target_grade(rg, mer):
    for seed in range(3):
        _, masks, got_rg, got_mer = render(np.random.default_rng([seed, rg, mer]), (288, 192), rg, mer, True)
        assert (got_rg, got_mer) == (rg, mer)
        present = {lesion for lesion, mask in zip(idrid.LESIONS, masks) if mask.any()}
        assert "OD" in present
        assert ("EX" in present) == (mer > 0)
        assert ("MA" in present) == (rg > 0)
        if rg == 0:
            assert present == {"OD"}
        if rg >= 3:
            assert "HE" in present


def ring(mask: np.ndarray) -> np.ndarray:
    """Pixels just outside a mask (4-neighbourhood)."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown & ~mask


@pytest.mark.parametrize("seed", [0, 1])
def test_masks_match_the_drawn_lesions(seed):
    image, masks, rg, mer = render(np.random.default_rng(seed), synthetic.DEFAULT_SIZE, 4, 2, soft_exudates=True)
    assert image.dtype == np.uint8 and image.shape == (384, 576, 3) and masks.shape == (5, 384, 576)
    red, green, blue = (image[..., c].astype(float) for c in range(3))
    m = dict(zip(idrid.LESIONS, masks))
    assert all(m[k].any() for k in idrid.LESIONS)
    # bright lesions: every mask pixel is brighter in blue than any pixel just outside
    for lesion in ("EX", "SE"):
        assert blue[m[lesion]].min() > blue[ring(m[lesion])].max(), lesion
    assert green[m["EX"]].mean() > 1.6 * green[ring(m["EX"])].mean()  # yellow
    # dark red lesions: much darker green than their surroundings, still reddish
    for lesion in ("MA", "HE"):
        assert green[m[lesion]].mean() < 0.4 * green[ring(m[lesion])].mean(), lesion
        assert red[m[lesion]].mean() > 2 * green[m[lesion]].mean()
    assert blue[m["OD"]].mean() > 2.5 * blue[ring(m["OD"])].mean()
    # dark surround outside the fundus field, darker macula than the field around it
    assert image[0, 0].max() < 15 and image[-1, -1].max() < 15


def test_lesion_size_scales_with_image():
    small = render(np.random.default_rng(5), (288, 192), 1, 0, False)[1]
    large = render(np.random.default_rng(5), (576, 384), 1, 0, False)[1]
    ma = idrid.LESIONS.index("MA")
    ratio = large[ma].sum() / small[ma].sum()
    assert 2.5 < ratio < 6  # area grows with the square of the scale (4x), up to pixel rounding


def test_command_line(tmp_path, capsys):
    out = tmp_path / "data"
    argv = [str(out), "--size", "96x64", "--seg-train", "1", "--seg-test", "1", "--grade-train", "3",
            "--grade-test", "1", "--seed", "2"]
    assert synthetic.main(argv) == 0
    assert "wrote 6 synthetic images (96x64)" in capsys.readouterr().out
    assert idrid.check(out)[1] == []
    assert synthetic.main(argv) == 1  # refuses to write over an existing tree
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synthetic.main([str(out), "--size", "big"])
    assert "expected WIDTHxHEIGHT" in capsys.readouterr().err
    assert synthetic.parse_size("4288x2848") == (4288, 2848)


def test_ensure_dataset_creates_once(tmp_path, monkeypatch):
    root = ensure_dataset(tmp_path / "synthetic", **TINY)
    assert idrid.tree_present(root)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated an existing tree")

    monkeypatch.setattr(synthetic, "generate", fail)
    assert ensure_dataset(root, **TINY) == root


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(synthetic, "_write_grading", crash)
    with pytest.raises(RuntimeError):
        generate(tmp_path / "data", **TINY)
    assert list((tmp_path / "data").iterdir()) == []


def test_ma_scale_draws_smaller_microaneurysms_and_is_recorded(tmp_path):
    from scipy import ndimage

    ma = idrid.LESIONS.index("MA")
    areas, counts = {}, {}
    for scale in (1.0, 0.4):
        _, masks, rg, _ = render(np.random.default_rng(7), (1152, 768), rg=1, mer=0, soft_exudates=False,
                                 ma_scale=scale)
        assert rg == 1 and masks[ma].any()
        areas[scale], counts[scale] = masks[ma].sum(), ndimage.label(masks[ma])[1]
    assert counts[0.4] == counts[1.0]  # as many microaneurysms, each smaller
    assert 0.08 < areas[0.4] / areas[1.0] < 0.3  # radius x0.4: area about x0.16
    assert "ma_scale" not in (generate(tmp_path / "a", **TINY) / "synthetic.json").read_text()
    assert '"ma_scale": 0.4' in (generate(tmp_path / "b", ma_scale=0.4, **TINY) / "synthetic.json").read_text()
    with pytest.raises(ValueError, match="ma_scale 0"):
        generate(tmp_path / "c", ma_scale=0, **TINY)
