"""The synthetic IDRiD tree: determinism, grades that follow the drawing, cameras recorded, CLI."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from codebase.data import idrid, synthetic
from codebase.data.images import read_size
from codebase.data.synthetic import (
    CAMERAS,
    ensure_dataset,
    generate,
    image_records,
    macular_edema_risk,
    render,
    retinopathy_grade,
    tree,
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
    with pytest.raises(SystemExit):
        synthetic.main(["--help"])
    assert "--camera" in capsys.readouterr().out
    assert synthetic.parse_size("4288x2848") == (4288, 2848)


def test_ensure_dataset_creates_once(tmp_path, monkeypatch):
    root = ensure_dataset(tmp_path / "synthetic", **TINY)
    assert idrid.tree_present(root)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated an existing tree")

    monkeypatch.setattr(tree, "generate", fail)
    assert ensure_dataset(root, **TINY) == root


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(tree, "_write_grading", crash)
    with pytest.raises(RuntimeError):
        generate(tmp_path / "data", **TINY)
    assert list((tmp_path / "data").iterdir()) == []


def test_ma_scale_is_recorded_and_checked(tmp_path):
    assert "ma_scale" not in (generate(tmp_path / "a", **TINY) / "synthetic.json").read_text()
    assert '"ma_scale": 0.4' in (generate(tmp_path / "b", ma_scale=0.4, **TINY) / "synthetic.json").read_text()
    with pytest.raises(ValueError, match="ma_scale 0"):
        generate(tmp_path / "c", ma_scale=0, **TINY)


def test_each_image_records_its_camera_and_the_default_tree_mixes_them(tmp_path):
    root = generate(tmp_path / "mix", seed=0, size=(96, 64), seg_train=2, seg_test=1, grade_train=10, grade_test=2)
    records = image_records(root)
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert sorted(records) == images
    assert {r["camera"] for r in records.values()} == set(synthetic.DEFAULT_MIX)
    assert all(set(r["defects"]) <= set(synthetic.cameras.DEFECTS) for r in records.values())
    assert json.loads((root / "synthetic.json").read_text())["camera_mix"] == synthetic.DEFAULT_MIX


@pytest.mark.parametrize("name", list(CAMERAS))
def test_a_tree_of_one_camera_passes_the_check(tmp_path, name):
    root = generate(tmp_path / name, seed=1, camera=name, **TINY)
    assert {r["camera"] for r in image_records(root).values()} == {name}
    assert idrid.check(root)[1] == []


def test_camera_option_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "two"
    argv = [str(out), "--size", "96x64", "--seg-train", "1", "--seg-test", "1", "--grade-train", "4",
            "--grade-test", "1", "--camera", "ddr,eyepacs"]
    assert synthetic.main(argv) == 0
    assert {r["camera"] for r in image_records(out).values()} == {"ddr", "eyepacs"}
    with pytest.raises(SystemExit):
        synthetic.main([str(tmp_path / "x"), "--camera", "polaroid"])
    assert "expected names from idrid" in capsys.readouterr().err
