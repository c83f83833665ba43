"""IDRiD reading: the tree, every file quirk, and a clear error for every bad input."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_tree import SYNTHETIC_TREE

from codebase.data import idrid
from codebase.data.idrid import IDRiDError
from codebase.data.images import read_image, read_mask

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(synthetic_root, tmp_path):
    """A private copy of the synthetic tree that a test may break."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "data", ignore=shutil.ignore_patterns(".cache")))


def write_csv(root, split, lines):
    path = idrid.grading_labels_path(root, split)
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


# ----------------------------------------------------------------------------- reading
def test_segmentation_records_follow_idrid_names(synthetic_root):
    train = idrid.segmentation_records(synthetic_root, "train")
    test = idrid.segmentation_records(synthetic_root, "test")
    assert [r.name for r in train] == ["IDRiD_01", "IDRiD_02", "IDRiD_03", "IDRiD_04"]
    assert [r.name for r in test] == ["IDRiD_05", "IDRiD_06"]  # the test split continues the numbering
    for record in train + test:
        assert record.image_path.is_file() and set(record.mask_paths) == set(idrid.LESIONS)
        assert record.mask_paths["OD"] is not None and record.mask_paths["MA"] is not None
        for lesion, path in record.mask_paths.items():
            assert path is None or path.name == f"{record.name}_{lesion}.tif"


def test_grading_records_follow_idrid_names(synthetic_root):
    train = idrid.grading_records(synthetic_root, "train")
    test = idrid.grading_records(synthetic_root, "test")
    assert [r.name for r in train] == [f"IDRiD_{i:03d}" for i in range(1, SYNTHETIC_TREE["grade_train"] + 1)]
    assert [r.name for r in test] == [f"IDRiD_{i:03d}" for i in range(1, SYNTHETIC_TREE["grade_test"] + 1)]
    assert {r.retinopathy_grade for r in train} == set(range(5))
    assert {r.macular_edema_risk for r in train} == set(range(3))
    assert all(r.image_path.is_file() for r in train + test)


def test_segmentation_and_grading_images_differ(synthetic_root):
    seg = read_image(idrid.segmentation_records(synthetic_root, "train")[0].image_path)
    grading = read_image(idrid.grading_records(synthetic_root, "train")[0].image_path)
    assert np.asarray(seg).shape == np.asarray(grading).shape
    assert not np.array_equal(np.asarray(seg), np.asarray(grading))


def test_csv_quirks_header_space_empty_columns_blank_lines_bom(tree):
    raw = idrid.grading_labels_path(tree, "train").read_text()
    assert raw.startswith("Image name,Retinopathy grade,Risk of macular edema ,,")
    assert raw.rstrip("\r\n").endswith(",,,,")  # comma-only and blank trailing lines
    path = write_csv(tree, "test", [
        "\ufeffImage name, Retinopathy grade ,Risk of macular edema ,,,",
        "IDRiD_001 , 3 ,2,,,", "", "IDRiD_002.jpg,0,0", ",,,,,", "  ", "",
    ])
    records = idrid.grading_records(tree, "test")
    assert [(r.name, r.retinopathy_grade, r.macular_edema_risk) for r in records] == [
        ("IDRiD_001", 3, 2), ("IDRiD_002", 0, 0)]
    assert path.is_file()


def test_absent_mask_files_are_none(synthetic_root):
    records = idrid.segmentation_records(synthetic_root, "train") + idrid.segmentation_records(synthetic_root, "test")
    absent = [(r.name, k) for r in records for k, p in r.mask_paths.items() if p is None]
    assert any(k == "SE" for _, k in absent)  # half of the images have no soft exudates


def test_synthetic_masks_cover_idrid_formats(synthetic_root):
    modes = set()
    for split in idrid.SPLITS:
        for record in idrid.segmentation_records(synthetic_root, split):
            for path in filter(None, record.mask_paths.values()):
                with Image.open(path) as image:
                    modes.add(image.mode)
    assert {"1", "L", "P", "RGB", "RGBA"} <= modes
    last = idrid.segmentation_records(synthetic_root, "test")[-1].mask_paths["EX"]
    with Image.open(last) as image:
        assert image.mode == "RGBA" and np.asarray(image)[..., :3].max(axis=-1).min() > 0  # only alpha tells
    assert 0 < read_mask(last).mean() < 0.2


# ----------------------------------------------------------------------------- bad input
def assert_error(call, *fragments):
    with pytest.raises(IDRiDError) as caught:
        call()
    for fragment in fragments:
        assert str(fragment) in str(caught.value), str(caught.value)
    return caught.value


def test_missing_root(tmp_path):
    assert_error(lambda: idrid.grading_records(tmp_path / "nowhere", "train"), tmp_path / "nowhere", "data root")
    assert_error(lambda: idrid.segmentation_records(tmp_path / "nowhere", "test"), tmp_path / "nowhere")


def test_unknown_split(synthetic_root):
    assert_error(lambda: idrid.grading_records(synthetic_root, "valid"), "'valid'", "train")


def test_missing_split_folders(tree):
    missing = idrid.segmentation_image_dir(tree, "test")
    shutil.rmtree(missing)
    assert_error(lambda: idrid.segmentation_records(tree, "test"), missing, "missing folder")
    idrid.segmentation_records(tree, "train")
    lesion_dir = idrid.segmentation_mask_dir(tree, "train", "SE")
    shutil.rmtree(lesion_dir)
    assert_error(lambda: idrid.segmentation_records(tree, "train"), lesion_dir, "Soft Exudates")
    images = idrid.grading_image_dir(tree, "train")
    shutil.rmtree(images)
    assert_error(lambda: idrid.grading_records(tree, "train"), images)
    labels = idrid.grading_labels_path(tree, "test")
    labels.unlink()
    assert_error(lambda: idrid.grading_records(tree, "test"), labels, "CSV")


def test_stray_mask_files(tree):
    folder = idrid.segmentation_mask_dir(tree, "train", "HE")
    Image.new("L", (192, 128)).save(folder / "IDRiD_99_HE.tif")
    Image.new("L", (192, 128)).save(folder / "IDRiD_01_XX.tif")
    error = assert_error(lambda: idrid.segmentation_records(tree, "train"), "IDRiD_99_HE.tif", "without an image",
                         "IDRiD_01_XX.tif", "expected <image name>_HE.tif")
    assert len(error.problems) == 2


def test_csv_missing_column(tree):
    path = write_csv(tree, "train", ["Image name,Retinopathy grade,,", "IDRiD_001,1,,"])
    assert_error(lambda: idrid.grading_records(tree, "train"), path, "Risk of macular edema")


@pytest.mark.parametrize("rg, mer, expected", [
    ("5", "0", "expected 0-4"), ("-1", "0", "expected 0-4"), ("2", "3", "expected 0-2"),
    ("two", "0", "expected an integer"), ("2.5", "1", "expected an integer"), ("", "1", "expected an integer"),
])
def test_grade_out_of_range_or_not_an_integer(tree, rg, mer, expected):
    path = write_csv(tree, "test", [",".join(idrid.CSV_HEADER), "IDRiD_001,0,0", f"IDRiD_002,{rg},{mer}"])
    assert_error(lambda: idrid.grading_records(tree, "test"), path, "line 3", expected)


def test_duplicate_image_name(tree):
    path = write_csv(tree, "test", [",".join(idrid.CSV_HEADER), "IDRiD_001,0,0", "IDRiD_002,1,0", "IDRiD_001,2,1"])
    assert_error(lambda: idrid.grading_records(tree, "test"), path, "line 4", "duplicate", "IDRiD_001", "line 2")


def test_image_listed_but_absent(tree):
    image = idrid.grading_image_path(tree, "test", "IDRiD_003")
    image.unlink()
    assert_error(lambda: idrid.grading_records(tree, "test"), image, "IDRiD_003", "not found")


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "..", "a/../../b", "sub\\IDRiD_001", ".hidden"])
def test_names_pointing_outside_the_root_are_refused(tree, name):
    write_csv(tree, "test", [",".join(idrid.CSV_HEADER), f"{name},0,0"])
    assert_error(lambda: idrid.grading_records(tree, "test"), repr(name), "refused")


def test_all_problems_are_listed(tree):
    write_csv(tree, "test", [",".join(idrid.CSV_HEADER), "IDRiD_001,9,0", "IDRiD_001,0,0", "IDRiD_077,0,0"])
    error = assert_error(lambda: idrid.grading_records(tree, "test"))
    assert len(error.problems) == 3


# ----------------------------------------------------------------------------- check
def test_check_prints_summary(synthetic_root, capsys):
    assert idrid.main(["check", str(synthetic_root)]) == 0
    out = capsys.readouterr().out
    assert "Segmentation" in out and "Grading" in out and "MER" in out
    summary, problems = idrid.check(synthetic_root)
    assert problems == []
    assert summary["segmentation"]["train"]["images"] == 4 and summary["segmentation"]["test"]["masks"]["OD"] == 2
    assert summary["grading"]["train"]["rg"] == [3, 1, 3, 2, 1]


def test_check_lists_every_problem_and_fails(tree, capsys):
    truncated = idrid.grading_records(tree, "test")[1].image_path
    truncated.write_bytes(truncated.read_bytes()[:300])
    record = idrid.segmentation_records(tree, "test")[0]
    Image.new("1", (50, 50)).save(record.mask_paths["OD"])
    missing = idrid.grading_image_path(tree, "train", "IDRiD_004")
    missing.unlink()
    empty = idrid.segmentation_records(tree, "train")[1].image_path
    empty.write_bytes(b"")
    assert idrid.main(["check", str(tree)]) == 1
    err = capsys.readouterr().err
    assert "4 problem(s)" in err
    for path in (truncated, record.mask_paths["OD"], missing, empty):
        assert str(path) in err


def test_check_command_line(synthetic_root, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "codebase.data.idrid", "check", str(synthetic_root)],
                        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert ok.returncode == 0 and "Grading" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "codebase.data.idrid", "check", str(tmp_path / "none")],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert bad.returncode == 1 and str(tmp_path / "none") in bad.stderr
