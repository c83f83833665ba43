"""Dataset formats: each reader on its synthetic tree and on trees with each quirk of the set as
distributed, the label mappings, format recognition, and `check` for every format."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codebase.data import idrid
from codebase.data.formats import FORMATS, detect_format, parse_dataset_arg, read_dataset
from codebase.data.formats import ddr, fgadr, messidor2
from codebase.data.formats.base import DatasetError, dme_from_mer, rg_from_icdr
from codebase.data.formats.check import check, format_summary, main
from codebase.data.images import read_mask
from codebase.data.synthetic_formats import CAMERAS, generate

EXTERNAL = ("aptos", "eyepacs", "messidor2", "ddr", "fgadr")


@pytest.fixture
def copy_of(external_trees, tmp_path):
    """copy_of(fmt) -> a private copy of the format's synthetic tree that a test may break."""
    return lambda fmt: Path(shutil.copytree(external_trees[fmt][0], tmp_path / fmt))


def assert_error(call, *fragments):
    with pytest.raises(DatasetError) as caught:
        call()
    for fragment in fragments:
        assert str(fragment) in str(caught.value), str(caught.value)
    return caught.value


# ----------------------------------------------------------------------------- label mappings
def test_icdr_grades_are_the_retinopathy_grade_and_nothing_else():
    assert [rg_from_icdr(grade) for grade in range(5)] == [0, 1, 2, 3, 4]
    for grade in (-1, 5):  # DDR's 5 (ungradable) is left out before mapping
        with pytest.raises(ValueError):
            rg_from_icdr(grade)


def test_referable_dme_is_idrid_mer_2():
    assert [dme_from_mer(mer) for mer in range(3)] == [0, 0, 1]
    with pytest.raises(ValueError):
        dme_from_mer(3)


def test_each_set_scores_what_its_labels_allow_and_names_the_rest_absent(external_trees, synthetic_root):
    expected = {  # format: (grading keys, lesions, absent keys)
        "idrid": (("rg", "mer", "dme"), idrid.LESIONS, set()),
        "aptos": (("rg",), (), {"mer", "dme", *idrid.LESIONS}),
        "eyepacs": (("rg",), (), {"mer", "dme", *idrid.LESIONS}),
        "messidor2": (("rg", "dme"), (), {"mer", *idrid.LESIONS}),
        "ddr": (("rg",), ("EX", "HE", "MA", "SE"), {"mer", "dme", "OD"}),
        "fgadr": (("rg",), ("MA", "HE", "EX", "SE"), {"mer", "dme", "OD"}),
    }
    roots = {fmt: root for fmt, (root, _) in external_trees.items()} | {"idrid": synthetic_root}
    for fmt, (grades, lesions, absent) in expected.items():
        labelled = read_dataset(fmt, roots[fmt])
        assert labelled.grades == grades and set(labelled.lesions) == set(lesions), fmt
        assert set(labelled.absent) == absent and all(labelled.absent.values()), fmt
        assert not set(labelled.absent) & {*labelled.grades, *labelled.lesions}, fmt
        for record in labelled.records:  # an absent label is None on every record, never 0
            assert all(record.grade(key) is None for key in absent if key in ("rg", "mer", "dme")), fmt
    messidor = read_dataset("messidor2", roots["messidor2"])
    assert "dme" in messidor.absent["mer"]  # says where the macular edema label went


def test_idrid_records_derive_dme_from_mer(synthetic_root):
    labelled = read_dataset("idrid", synthetic_root)
    graded = [r for r in labelled.records if r.retinopathy_grade is not None]
    assert len(graded) == 15 and {r.macular_edema_risk for r in graded} == {0, 1, 2}
    assert all(r.dme == (r.macular_edema_risk == 2) for r in graded)
    assert labelled.test_split == "test" and len(labelled.evaluation_records()) == 5 + 2


# ----------------------------------------------------------------------------- synthetic trees
@pytest.mark.parametrize("fmt", EXTERNAL)
def test_each_reader_finds_what_its_synthetic_tree_holds(fmt, external_trees):
    root, expected = external_trees[fmt]
    labelled = read_dataset(fmt, root)
    assert {record.name for record in labelled.records} == set(expected)
    for record in labelled.records:
        truth = expected[record.name]
        assert record.image_path.is_file()
        if "rg" in truth:
            assert record.retinopathy_grade == truth["rg"]
        if "dme" in truth:
            assert record.dme == truth["dme"]
        if "split" in truth:
            assert record.split == truth["split"]
        if "lesions" in truth:
            drawn = {lesion for lesion, path in record.mask_paths.items() if path is not None
                     and read_mask(path, threshold=record.mask_thresholds.get(lesion, 1)).any()}
            assert drawn == set(truth["lesions"]), record.name
    assert json.loads((root / "synthetic.json").read_text())["camera"] == CAMERAS[fmt]


def test_each_format_is_drawn_by_its_own_camera():
    assert set(CAMERAS) == set(EXTERNAL) and len(set(CAMERAS.values())) == len(EXTERNAL)


def test_synthetic_trees_are_deterministic_and_refuse_to_overwrite(tmp_path):
    first = generate("messidor2", tmp_path / "a", seed=3, count=2, size=(64, 48))
    second = generate("messidor2", tmp_path / "b", seed=3, count=2, size=(64, 48))
    assert first == second
    for path in (tmp_path / "a" / "IMAGES").iterdir():
        assert path.read_bytes() == (tmp_path / "b" / "IMAGES" / path.name).read_bytes()
    with pytest.raises(FileExistsError):
        generate("messidor2", tmp_path / "a", count=2, size=(64, 48))


def test_fgadr_images_are_1280_square_pngs_by_default():
    from codebase.data.synthetic_formats import DEFAULT_SIZES
    assert DEFAULT_SIZES["fgadr"] == (1280, 1280) and fgadr.IMAGE_SUFFIX == ".png"


# ----------------------------------------------------------------------------- quirks
def test_ddr_valid_split_reads_its_segmentation_label_folder(external_trees, copy_of):
    root, _ = external_trees["ddr"]
    valid = [r for r in read_dataset("ddr", root).records if r.split == "valid" and r.mask_paths]
    assert valid and all("segmentation label" in str(r.mask_paths["EX"]) for r in valid)
    tree = copy_of("ddr")
    split = tree / ddr.LESION_DIR / "valid"
    (split / "segmentation label").rename(split / "label")  # not how DDR names it
    assert_error(lambda: read_dataset("ddr", tree), split / "segmentation label" / "EX", "missing folder")


def test_ddr_grade_5_is_left_out_and_counted(external_trees):
    labelled = read_dataset("ddr", external_trees["ddr"][0])
    listed = (external_trees["ddr"][0] / ddr.GRADING_DIR / "test.txt").read_text().split("\n")
    ungradable = [line.split()[0] for line in listed if line.endswith(" 5")]
    assert len(ungradable) == 1
    assert not any(r.name.endswith(Path(ungradable[0]).stem) for r in labelled.records)
    assert labelled.evaluation_left_out() == {ddr.UNGRADABLE: 1}  # the test split's only
    assert sum(labelled.left_out.values()) == 3  # one per split


def test_ddr_all_zero_masks_mean_absent(external_trees):
    labelled = read_dataset("ddr", external_trees["ddr"][0])
    files = [r.mask_paths[lesion] for r in labelled.records if r.mask_paths for lesion in ddr.LESIONS]
    assert all(path is not None for path in files)  # DDR writes every mask file...
    assert any(not read_mask(path).any() for path in files)  # ...all zero where the lesion is absent
    summary, problems = check(external_trees["ddr"][0])
    assert not problems
    assert any(info["masks"][lesion] < info["lesion_images"]  # an all-zero mask is not counted
               for info in summary["splits"].values() for lesion in ddr.LESIONS)


def test_fgadr_grading_csv_has_no_header(external_trees, copy_of):
    root, expected = external_trees["fgadr"]
    first_line = (root / fgadr.SEG_SET / fgadr.LABELS_FILE).read_text().splitlines()[0]
    name, grade = first_line.split(",")
    record = next(r for r in read_dataset("fgadr", root).records if r.image_path.name == name)
    assert record.retinopathy_grade == int(grade)  # the first line is an image, not a header
    tree = copy_of("fgadr")
    labels = tree / fgadr.SEG_SET / fgadr.LABELS_FILE
    labels.write_text("image,grade\n" + labels.read_text())
    assert_error(lambda: read_dataset("fgadr", tree), f"{labels}, line 1", "'grade' is 'grade'")


def test_fgadr_microaneurysm_masks_are_anti_aliased_and_thresholded_at_128(external_trees):
    records = read_dataset("fgadr", external_trees["fgadr"][0]).records
    path = next(r.mask_paths["MA"] for r in records if r.mask_paths["MA"] is not None)
    grey = np.asarray(Image.open(path))
    assert ((grey > 0) & (grey < 128)).any()  # grey edge pixels
    assert all(r.mask_thresholds == {"MA": 128} for r in records)
    thresholded, any_value = read_mask(path, threshold=128), read_mask(path)
    assert np.array_equal(thresholded, grey >= 128) and any_value.sum() > thresholded.sum()
    assert all("Hemohedge_Masks" in str(r.mask_paths["HE"]) for r in records if r.mask_paths["HE"])
    assert not any("IRMA" in str(p) or "Neovascular" in str(p) for r in records for p in r.mask_paths.values())


def test_messidor2_ungradable_rows_are_left_out_and_counted(external_trees, copy_of):
    root, expected = external_trees["messidor2"]
    labelled = read_dataset("messidor2", root)
    assert labelled.evaluation_left_out() == {messidor2.UNGRADABLE: 2} and len(labelled.records) == 3
    assert {r.image_path.suffix for r in labelled.records} | {".JPG"} >= {".png", ".JPG", ".jpg"}
    suffixes = {p.suffix for p in (root / messidor2.IMAGES_DIR).iterdir()}
    assert suffixes == {".png", ".JPG", ".jpg"}
    tree = copy_of("messidor2")
    labels = tree / messidor2.LABELS_FILE
    lines = labels.read_text().splitlines()
    name = lines[1].split(",")[0]
    lines[1] = f"{name},,,1"  # gradable but no grade: a problem, not an image left out
    labels.write_text("\n".join(lines) + "\n")
    assert_error(lambda: read_dataset("messidor2", tree), f"{labels}, line 2", "adjudicated_dr_grade")


def test_eyepacs_scores_its_test_split_or_else_the_whole_training_set(external_trees, copy_of):
    labelled = read_dataset("eyepacs", external_trees["eyepacs"][0])
    assert labelled.test_split == "test" and {r.split for r in labelled.evaluation_records()} == {"test"}
    tree = copy_of("eyepacs")
    (tree / "retinopathy_solution.csv").unlink()
    assert read_dataset("eyepacs", tree).test_split is None
    (tree / "trainLabels.csv").write_text("image,level\n10_left,9\n")
    assert_error(lambda: read_dataset("eyepacs", tree), "trainLabels.csv, line 2", "'level' is '9'")


def test_a_listed_image_that_is_missing_is_named(copy_of):
    tree = copy_of("aptos")
    victim = sorted((tree / "train_images").iterdir())[0]
    victim.unlink()
    assert_error(lambda: read_dataset("aptos", tree), victim, "not found")
    assert_error(lambda: read_dataset("aptos", tree / "nowhere"), tree / "nowhere", "not found")


# ----------------------------------------------------------------------------- recognition, check
def test_formats_are_recognised_from_their_trees(external_trees, synthetic_root, tmp_path):
    for fmt, (root, _) in external_trees.items():
        assert detect_format(root) == fmt
    assert detect_format(synthetic_root) == "idrid"
    assert_error(lambda: detect_format(tmp_path), "cannot recognise", *FORMATS)
    assert parse_dataset_arg("ddr:data/DDR") == ("ddr", Path("data/DDR"))
    assert parse_dataset_arg("auto:x") == ("auto", Path("x"))
    for bad in ("data/DDR", "kaggle:data", "ddr:"):
        assert_error(lambda: parse_dataset_arg(bad), bad, "FORMAT:PATH")


def test_check_prints_a_summary_for_every_format(external_trees, synthetic_root, capsys):
    for fmt, (root, expected) in external_trees.items():
        assert main(["check", str(root)]) == 0
        text = capsys.readouterr().out
        assert FORMATS[fmt].TITLE in text and "Evaluated" in text and "Absent" in text
    assert main(["check", str(synthetic_root), "--format", "idrid"]) == 0
    summary, _ = check(external_trees["ddr"][0])
    text = format_summary(summary)
    assert "Left out: 1 image(s) of test, ungradable (grade 5)" in text and "OD (DDR has no optic disc masks)" in text


def test_check_names_every_problem_and_a_corrupt_file(copy_of, capsys):
    tree = copy_of("fgadr")
    image = sorted((tree / fgadr.SEG_SET / fgadr.IMAGES_DIR).iterdir())[0]
    image.write_bytes(image.read_bytes()[:200])  # truncated
    assert main(["check", str(tree), "--format", "fgadr"]) == 1
    assert str(image) in capsys.readouterr().err
    assert main(["check", str(tree), "--format", "aptos"]) == 1
    assert "train.csv" in capsys.readouterr().err
    assert main(["check", str(tree), "--format", "idrid"]) == 1  # IDRiD's own errors, listed the same way
    assert "Disease Grading" in capsys.readouterr().err
