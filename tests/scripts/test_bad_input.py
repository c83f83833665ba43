"""Bad input through the real train scripts: one `error:` line, exit code 2, earlier runs untouched.

Every case starts a train script as a subprocess next to the folder of a finished earlier run
(saved/mlt_demo, the multi-task demo's run name) and checks that the script names the file or
the setting and what was expected, and that the earlier run's folder is exactly as it was with
nothing new beside it. Multi-task cases with bad data continue the earlier run for a second
epoch, so the run resumes, rewrites config.json and appends to its log before the bad file is
read: the failed start must undo that. The last tests check the entry point and the undo in-process.
"""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from codebase.data import idrid
from codebase.training.run_folder import Run

pytestmark = pytest.mark.slow  # trains models or runs scripts in subprocesses

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
RUN = "mlt_demo"
TINY = {
    "train_mlt_model.py": ["data.grading_size=64,96", "data.segmentation_size=64,96", "model.aspp_channels=16",
                           "model.decoder_channels=16", "model.head_hidden=16", "train.epochs=1",
                           "train.iterations=1", "train.batch_size=2", "train.eval_batch_size=8", "run.plots=false"],
    "train_classifier.py": ["data.image_size=64,96", "model.head_hidden=16", "train.epochs=1", "train.batch_size=5",
                            "train.eval_batch_size=8", "run.plots=false"],
    "train_segmentation.py": ["data.image_size=64,96", "data.crop_size=48,80", "model.aspp_channels=16", "model.decoder_channels=16", "train.epochs=1",
                              "train.batch_size=2", "train.eval_batch_size=8", "run.plots=false"],
}
NEXT_EPOCH = "train.epochs=2"
# Only ever replaced by a rename, so each case's copy may share them with the earlier run (hard links).
LINKED = ("checkpoint.pth", "model.pth")


def run_script(script, data_root, save_dir, *sets):
    """`python <script> --demo` on `data_root` into `save_dir` with the tiny settings and `sets`."""
    overrides = [arg for item in [f"run.save_dir={save_dir}", *TINY[script], *sets] for arg in ("--set", item)]
    return subprocess.run([sys.executable, str(REPO / script), "--demo", "--data-root", str(data_root), *overrides],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def state(folder):
    """Every file under `folder`: its bytes, or for the hard-linked ones the identity of the file."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            info = path.stat()
            files[str(path.relative_to(folder))] = ((info.st_ino, info.st_size, info.st_mtime_ns)
                                                    if path.name in LINKED else path.read_bytes())
    return files


@pytest.fixture(scope="module")
def earlier_run(synthetic_root, tmp_path_factory):
    """The folder of a finished one-epoch multi-task run."""
    save_dir = tmp_path_factory.mktemp("earlier")
    result = run_script("train_mlt_model.py", synthetic_root, save_dir)
    assert result.returncode == 0, result.stderr
    return save_dir / RUN


@pytest.fixture
def saved(earlier_run, tmp_path):
    """A save_dir holding a copy of the earlier run; after the test, that copy must be unchanged."""
    save_dir = tmp_path / "saved"

    def copy(source, target):
        (os.link if Path(source).name in LINKED else shutil.copy2)(source, target)

    shutil.copytree(earlier_run, save_dir / RUN, copy_function=copy)
    before = state(save_dir / RUN)
    yield save_dir
    assert state(save_dir / RUN) == before, "the earlier run's files changed"
    assert sorted(os.listdir(save_dir)) == [RUN], "the failed run left files behind"


@pytest.fixture
def tree(synthetic_root, tmp_path):
    """A private copy of the synthetic tree that a case may break."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "data", ignore=shutil.ignore_patterns(".cache")))


def assert_error(result, *fragments):
    """Exit code 2 and a last stderr line `error: ...` holding every fragment, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), result.stderr
    for fragment in fragments:
        assert str(fragment) in line, line


# ----------------------------------------------------------------------------- breaking a tree
def edit_csv(root, split, edit):
    """Rewrite a grading CSV as `edit(rows)` returns it (rows as lists of cells, header first)."""
    path = idrid.grading_labels_path(root, split)
    with open(path, newline="") as file:
        rows = [row for row in csv.reader(file) if any(cell.strip() for cell in row)]
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows(edit(rows))
    return path


def set_cell(rows, line, column, value):
    rows[line - 1][column] = value
    return rows


def drop_column(root):
    path = edit_csv(root, "train", lambda rows: [row[:1] + row[2:] for row in rows])
    return [path, "missing column 'Retinopathy grade'"]


def grade_out_of_range(root):
    path = edit_csv(root, "train", lambda rows: set_cell(rows, 3, 1, "7"))
    return [path, "line 3", "'Retinopathy grade' is 7, expected 0-4"]


def grade_not_an_integer(root):
    path = edit_csv(root, "train", lambda rows: set_cell(rows, 4, 2, "two"))
    return [path, "line 4", "'Risk of macular edema' is 'two', expected an integer 0-2"]


def duplicate_name(root):
    path = edit_csv(root, "train", lambda rows: set_cell(rows, 5, 0, "IDRiD_002"))
    return [path, "line 5", "duplicate image name 'IDRiD_002' (first on line 3)"]


def missing_split(root):
    folder = idrid.grading_image_dir(root, "test")
    shutil.rmtree(folder)
    return [folder, "missing folder, expected the grading test images"]


def absent_image(root):
    path = idrid.grading_image_path(root, "train", "IDRiD_003")
    path.unlink()
    return ["image 'IDRiD_003' listed but", path, "not found"]


def truncated_jpeg(root):
    path = idrid.grading_image_path(root, "test", "IDRiD_002")
    path.write_bytes(path.read_bytes()[:1500])
    return [path, "unreadable or truncated image data"]


def segmentation_mask(root, name, lesion="OD"):
    return idrid.segmentation_mask_path(root, "test", name, lesion)


def empty_tiff(root):
    path = segmentation_mask(root, "IDRiD_05")
    path.write_bytes(b"")
    return [path, "empty file (0 bytes), expected an image"]


def mask_of_wrong_size(root):
    path = segmentation_mask(root, "IDRiD_06")
    Image.new("L", (100, 70)).save(path)
    return [path, "mask is 100x70, expected 192x128 (the size of its image)"]


@pytest.mark.parametrize("break_tree", [missing_split, drop_column, grade_out_of_range, grade_not_an_integer,
                                        duplicate_name, absent_image, truncated_jpeg, empty_tiff,
                                        mask_of_wrong_size])
def test_bad_data_is_named_and_the_resumed_run_is_left_as_it_was(tree, saved, break_tree):
    fragments = break_tree(tree)
    assert_error(run_script("train_mlt_model.py", tree, saved, NEXT_EPOCH), *fragments)


def test_missing_data_root(saved, tmp_path):
    root = tmp_path / "nowhere"
    # run.demo=false: the demo's settings, without generating a synthetic tree at the missing root
    result = run_script("train_mlt_model.py", root, saved, NEXT_EPOCH, "run.demo=false")
    assert_error(result, root, "data root not found, expected a folder holding 'A. Segmentation'")
    assert not root.exists()


def test_greyscale_and_cmyk_images_are_converted(tree, saved):
    for path, mode in ((idrid.grading_image_path(tree, "test", "IDRiD_001"), "L"),
                       (idrid.segmentation_image_path(tree, "test", "IDRiD_05"), "CMYK")):
        with Image.open(path) as image:
            image.convert(mode).save(path)
        with Image.open(path) as image:
            assert image.mode == mode
    result = run_script("train_mlt_model.py", tree, saved, "run.name=converted")
    assert result.returncode == 0, result.stderr
    shutil.rmtree(saved / "converted")  # the fixture checks nothing else was written


@pytest.mark.parametrize("script, setting, fragments", [
    ("train_mlt_model.py", "model.num_expert=2", ["unknown config key 'model.num_expert'",
                                                  "did you mean 'model.num_experts'"]),
    ("train_mlt_model.py", "train.batch_size=two", ["train.batch_size='two': expected an integer"]),
    ("train_mlt_model.py", "routing.top_p=1.5", ["routing.top_p=1.5: expected a number in (0, 1]"]),
    ("train_mlt_model.py", "routing.top_p=0", ["routing.top_p=0.0: expected a number in (0, 1]"]),
    ("train_mlt_model.py", "model.num_experts=0", ["model.num_experts=0: expected an integer >= 1"]),
    ("train_mlt_model.py", "model.backbone=resnet19", ["model.backbone='resnet19': expected one of 'resnet18'"]),
    ("train_mlt_model.py", "train.batch_size=0", ["train.batch_size=0: expected an integer >= 1"]),
    ("train_classifier.py", "train.batch_size=-4", ["train.batch_size=-4: expected an integer >= 1"]),
    ("train_segmentation.py", "model.output_stride=32", ["model.output_stride=32: expected one of 8, 16"]),
])
def test_bad_setting_is_named(synthetic_root, saved, script, setting, fragments):
    assert_error(run_script(script, synthetic_root, saved, setting), *fragments)


def test_unwritable_output_folder(synthetic_root, saved, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # root may write anywhere, but not below a regular file
    result = run_script("train_mlt_model.py", synthetic_root, saved, f"run.save_dir={blocker / 'sub'}")
    assert_error(result, f"cannot write the run folder {blocker / 'sub' / RUN}", "run.save_dir")


def test_classifier_names_a_truncated_image_read_by_a_worker(tree, saved):
    fragments = truncated_jpeg(tree)
    assert_error(run_script("train_classifier.py", tree, saved, "data.num_workers=1"), *fragments)


def test_segmentation_names_an_empty_mask(tree, saved):
    fragments = empty_tiff(tree)
    assert_error(run_script("train_segmentation.py", tree, saved), *fragments)


# ----------------------------------------------------------------------------- in-process


def test_failed_start_removes_the_folders_it_created(tmp_path):
    config = {"device": "cpu", "run": {"name": "new", "save_dir": str(tmp_path / "made" / "here")}}
    with pytest.raises(idrid.IDRiDError):
        with Run(config) as run:
            assert (run.folder / "config.json").is_file()
            raise idrid.IDRiDError("bad data")
    assert os.listdir(tmp_path) == []
