"""Bad input and faults, the one suite: what real users feed the tools, and faults of the machines they run on.

The matrix: every case runs one tool (`check`, the three train scripts, predict.py,
compare_models.py, the notebooks' run loader) on one bad input and checks the exit code, the
`error:` line (the file or key, and what was expected) and that the earlier run folders are
byte-for-byte as they were with nothing new beside them. Cases run in-process through each
tool's own entry point (`main(argv)`, or `run_main` as the train scripts' `__main__` does);
a representative few run as real subprocesses. Later tests: files other tools write read
correctly, locking of run folders, storage limits, and torchrun's restarts and several nodes.
"""
import csv
import errno
import io
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import compare_models
import export
import predict
import run_experiments
import train_classifier
import train_mlt_model
import train_segmentation
from codebase.config import parse_cli
from codebase.data import idrid
from codebase.data.images import read_image, read_mask
from codebase.errors import run_main
from codebase.runtime.atomic import StorageError, atomic_write
from codebase.runtime.device import make_grad_scaler
from codebase.runtime.lock import LOCK_FILE, FolderLock
from codebase.training.run_folder import Run, load_checkpoint
from inference.runs import RunError, build_model, load_run, open_run

pytestmark = pytest.mark.slow  # trains tiny models, runs scripts

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
SCRIPTS = {"train_classifier": train_classifier, "train_segmentation": train_segmentation,
           "train_mlt_model": train_mlt_model}
COMMON = ["model.backbone=resnet18", "model.pretrained=none", "train.epochs=1", "train.eval_batch_size=8",
          "run.plots=false", "data.num_workers=0"]
TINY = {
    "train_classifier": ["data.image_size=64,96", "model.head_hidden=8", "train.batch_size=4"],
    "train_segmentation": ["data.image_size=64,96", "data.crop_size=64,96", "model.aspp_channels=8",
                           "model.decoder_channels=8", "train.batch_size=2"],
    "train_mlt_model": ["data.grading_size=64,96", "data.segmentation_size=64,96", "model.aspp_channels=8",
                        "model.decoder_channels=8", "model.head_hidden=8", "train.iterations=1", "train.batch_size=2"],
}
EARLIER = "earlier"  # the name of the earlier (classifier) run every train case starts next to


def train_argv(script, root, save_dir, *sets, name=EARLIER):
    argv = ["--device", "cpu", "--data-root", str(root), "--run-name", name, "--set", f"run.save_dir={save_dir}"]
    return argv + [arg for item in [*COMMON, *TINY[script], *sets] for arg in ("--set", item)]


def call(tool, argv, capsys):
    """(exit code, stderr) of one tool run in-process through its command-line entry point."""
    capsys.readouterr()
    if tool == "check":
        code = idrid.main(["check", *argv])
    elif tool == "predict":
        code = predict.main(argv)
    elif tool == "compare":
        code = compare_models.main(argv)
    elif tool == "export":
        code = export.main(argv)
    elif tool == "grid":
        code = run_experiments.main(argv)
    else:
        script = SCRIPTS[tool]
        try:
            run_main(script.main, lambda: parse_cli(script.CONFIG, argv, script.DEMO, validate=script.validate))
            code = 0
        except SystemExit as stop:
            code = stop.code
    return code, capsys.readouterr().err


def error_line(stderr):
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert lines, stderr
    return lines[-1]


def state(folder: Path) -> dict:
    """Every file under `folder` and its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def earlier(synthetic_root, tmp_path_factory):
    """A finished one-epoch classifier run (resumable: checkpoint.pth)."""
    save_dir = tmp_path_factory.mktemp("earlier")
    script = train_classifier
    script.main(parse_cli(script.CONFIG, train_argv("train_classifier", synthetic_root, save_dir), script.DEMO,
                          validate=script.validate))
    return save_dir / EARLIER


class Saved:
    """A save_dir holding a copy of the earlier run; `freeze()` records that run's files."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.run = folder / EARLIER
        self.frozen = state(self.run)

    def freeze(self):
        self.frozen = state(self.run)


@pytest.fixture
def saved(earlier, tmp_path):
    """save_dir with a copy of the earlier run. A case that breaks the run calls freeze() after; at
    the end the run must be byte-for-byte as frozen, with nothing new beside it."""
    shutil.copytree(earlier, tmp_path / "saved" / EARLIER)
    folder = Saved(tmp_path / "saved")
    yield folder
    assert state(folder.run) == folder.frozen, "the earlier run's files changed"
    assert sorted(os.listdir(folder.folder)) == [EARLIER], "the failed command left files behind"


@pytest.fixture
def tree(synthetic_root, tmp_path):
    """A private copy of the synthetic tree that a case may break."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "data", ignore=shutil.ignore_patterns(".cache")))


SMALL = {"classifier": (train_classifier, ["model.head_hidden=8", "data.image_size=64,96"]),
         "segmentation": (train_segmentation, ["model.output_stride=16", "model.aspp_channels=8",
                                               "model.decoder_channels=8", "data.image_size=64,96",
                                               "data.crop_size=64,96"]),
         "multitask": (train_mlt_model, ["model.aspp_channels=8", "model.decoder_channels=8", "model.head_hidden=8",
                                         "data.grading_size=64,96", "data.segmentation_size=64,96"])}


def write_run(folder: Path, kind: str, root) -> Path:
    """A finished run folder of `kind` with untrained weights (only loading matters here)."""
    script, settings = SMALL[kind]
    argv = ["--data-root", str(root)] + [arg for item in ["model.backbone=resnet18", "model.pretrained=none", *settings]
                                         for arg in ("--set", item)]
    config = parse_cli(script.CONFIG, argv)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    torch.save(build_model(config).state_dict(), folder / "model.pth")
    return folder


@pytest.fixture(scope="module")
def run_folders(synthetic_root, tmp_path_factory):
    """{kind: a finished run folder} for the three kinds (untrained weights: only loading matters)."""
    base = tmp_path_factory.mktemp("runs")
    return {kind: write_run(base / kind, kind, synthetic_root) for kind in SMALL}


class PrivateRuns(dict):
    """{kind: a private copy of that run folder}, each copied on first use: a case damages one or two
    of the three, and each holds ~45 MB of weights (copying all three for every case wrote ~10 GB)."""

    def __init__(self, sources: dict, folder: Path):
        super().__init__()
        self.sources, self.folder = sources, folder

    def __missing__(self, kind):
        self[kind] = Path(shutil.copytree(self.sources[kind], self.folder / kind))
        return self[kind]


@pytest.fixture
def runs(run_folders, tmp_path):
    """Private copies of the run folders, for a case to damage."""
    return PrivateRuns(run_folders, tmp_path / "runs")


# ----------------------------------------------------------------------------- breaking a tree
def edit_csv(root, split, edit):
    path = idrid.grading_labels_path(root, split)
    with open(path, newline="") as file:
        rows = [row for row in csv.reader(file) if any(cell.strip() for cell in row)]
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows(edit(rows))
    return path


def header_only_test_csv(root):
    path = edit_csv(root, "test", lambda rows: rows[:1])
    return [path, "no images listed (only a header)"]


def bomb_jpeg(path: Path, side: int = 20000) -> None:
    """A JPEG whose header claims side x side pixels (400 million at 20000): a decompression bomb."""
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    start = data.find(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[start + 5:start + 7] = side.to_bytes(2, "big")
    data[start + 7:start + 9] = side.to_bytes(2, "big")
    path.write_bytes(bytes(data))


def huge_grading_image(root):
    path = idrid.grading_image_path(root, "train", "IDRiD_002")
    bomb_jpeg(path)
    return [path, "image too large to decode safely"]


def huge_segmentation_image(root):
    path = idrid.segmentation_image_path(root, "test", "IDRiD_05")
    bomb_jpeg(path)
    return [path, "image too large to decode safely"]


def broken_link_mask(root):
    path = idrid.segmentation_mask_path(root, "train", "IDRiD_01", "EX")
    path.unlink(missing_ok=True)
    path.symlink_to(path.parent / "gone.tif")
    return [path, "broken link", "expected the Hard Exudates mask of IDRiD_01"]


def broken_link_image(root):
    path = idrid.grading_image_path(root, "test", "IDRiD_003")
    path.unlink()
    path.symlink_to(path.parent / "gone.jpg")
    return [path, "broken link", "expected an image"]


def too_few_for_a_batch(root):
    return ["train.batch_size", "fewer than one batch"]


@dataclass
class Case:
    id: str
    tool: str
    args: Callable  # (tree, saved, runs) -> (argv, expected fragments)
    code: int = 2


def settings_case(script, *sets, fragments, name=EARLIER, flags=()):
    def args(tree, saved, runs):
        return [*train_argv(script, tree, saved.folder, *sets, name=name), *flags], fragments
    return args


def data_case(script, break_tree, *sets, name=EARLIER):
    def args(tree, saved, runs):
        fragments = break_tree(tree)
        saved.freeze()
        return train_argv(script, tree, saved.folder, *sets, name=name), fragments
    return args


def check_case(break_tree):
    def args(tree, saved, runs):
        return [str(tree)], break_tree(tree)
    return args


def damage_run(kind, damage, tool):
    """A case that damages the `kind` run folder with damage(folder) -> fragments and gives it to `tool`."""
    def args(tree, saved, runs):
        folder = runs[kind]
        fragments = damage(folder, runs)
        if tool == "predict":
            image = idrid.grading_image_path(tree, "test", "IDRiD_001")
            return ["--run", str(folder), str(image), "--device", "cpu", "--out", str(saved.folder / "predictions")], fragments
        return ["--runs", str(folder), "--device", "cpu", "--out", str(saved.folder / "comparison"),
                "--data-root", str(tree)], fragments
    return args


def config_a_list(folder, runs):
    (folder / "config.json").write_text("[1, 2]")
    return [folder / "config.json", "holds list, expected the JSON object of a run's settings"]


def config_not_json(folder, runs):
    (folder / "config.json").write_text('{"model": ')
    return [folder / "config.json", "not valid JSON"]


def config_without_model(folder, runs):
    (folder / "config.json").write_text('{"kind": "classifier"}')
    return [folder / "config.json", "without a 'model' section"]


def empty_weights(folder, runs):
    (folder / "model.pth").write_bytes(b"")
    return [folder / "model.pth", "empty file (0 bytes), expected the model's weights"]


def truncated_weights(folder, runs):
    path = folder / "model.pth"
    path.write_bytes(path.read_bytes()[:4000])
    return [path, "not a readable weights file"]


def classifier_weights(folder, runs):
    shutil.copy(runs["classifier"] / "model.pth", folder / "model.pth")
    return [folder / "model.pth", "the weights of a classifier run (train_classifier.py)",
            f"describes a {folder.name} run"]


def segmentation_weights(folder, runs):
    shutil.copy(runs["segmentation"] / "model.pth", folder / "model.pth")
    return [folder / "model.pth", "the weights of a segmentation run (train_segmentation.py)"]


def checkpoint_as_weights(folder, runs):
    state = {"epoch": 1, "model": torch.load(folder / "model.pth", weights_only=True), "config": {}, "history": []}
    torch.save(state, folder / "model.pth")
    return [folder / "model.pth", "a training checkpoint, not a model's weights"]


def missing_weights(folder, runs):
    (folder / "model.pth").unlink()
    return [folder / "model.pth", "not found", "expected a finished run folder"]


def resume_args(script, damage, *sets):
    def args(tree, saved, runs):
        fragments = damage(saved.run)
        saved.freeze()
        return train_argv(script, tree, saved.folder, "train.epochs=2", *sets) + ["--resume"], fragments
    return args


def empty_checkpoint(folder):
    (folder / "checkpoint.pth").write_bytes(b"")
    return [folder / "checkpoint.pth", "cannot be loaded safely", "--no-resume"]


def truncated_checkpoint(folder):
    path = folder / "checkpoint.pth"
    path.write_bytes(path.read_bytes()[:100000])
    return [path, "cannot be loaded safely"]


def weights_as_checkpoint(folder):
    shutil.copy(folder / "model.pth", folder / "checkpoint.pth")
    return [folder / "checkpoint.pth", "not a run checkpoint (it needs epoch, model, config and history)"]


def unchanged(folder):
    return [f"cannot resume {folder}: settings that fix the run differ from its checkpoint",
            "kind: 'classifier' (checkpoint) -> ", "--no-resume"]


def changed_setting(key, before, now):
    """A resume with a setting that fixes the run changed: refused naming it, both values and the way out."""
    def damage(folder):
        return [f"cannot resume {folder}", f"{key}: {before} (checkpoint) -> {now} (now)",
                "start a new run folder with --no-resume"]
    return damage


def float_mask(root):
    """A float mask whose background is NaN, as some tools save probability maps."""
    path = idrid.segmentation_mask_path(root, "train", "IDRiD_01", "OD")
    with Image.open(path) as mask:
        values = np.where(np.asarray(mask.convert("L")) > 0, 1.0, np.nan).astype(np.float32)
    path.unlink()
    Image.fromarray(values, "F").save(path)
    return [path, "floating-point mask, expected integer pixels"]


def one_grading_image_fewer(root):
    """The training CSV without its last image: the run's split can no longer be drawn from this tree."""
    edit_csv(root, "train", lambda rows: rows[:-1])
    return ["splits into other images than the run's", "splits.json", "--no-resume"]


def output_case(tool, out, *fragments, extra=()):
    """`tool` asked to write `out(saved.run)` into the earlier run: refused before any work, naming it."""
    def args(tree, saved, runs):
        target = out(saved.run)
        argv = {"export": ["--run", str(saved.run), "--out", str(target)],
                "predict": ["--run", str(saved.run), str(idrid.grading_image_path(tree, "test", "IDRiD_001")),
                            "--device", "cpu", "--out", str(target)],
                "compare": ["--runs", str(saved.run), "--device", "cpu", "--out", str(target), "--data-root",
                            str(tree)],
                "grid": ["smoke", "--seeds", "1", "--data-root", str(tree), "--out", str(target)]}[tool]
        return argv + list(extra), [f"--out {target}", *[fragment.format(run=saved.run) for fragment in fragments]]
    return args


def no_checkpoint(folder):
    (folder / "checkpoint.pth").unlink()
    return ["--resume: there is no checkpoint to resume at", folder / "checkpoint.pth"]


RUN_NAME = "expected a folder name (not empty, '.' or '..', without / or \\)"
CASES = [
    # settings, through every train script's command line
    Case("mlt grading_size 0,0", "train_mlt_model", settings_case(
        "train_mlt_model", "data.grading_size=0,0", fragments=["data.grading_size=[0, 0]: expected [height, width]"])),
    Case("mlt segmentation_size 0,0", "train_mlt_model", settings_case(
        "train_mlt_model", "data.segmentation_size=0,0", fragments=["data.segmentation_size=[0, 0]: expected"])),
    Case("classifier image_size 0,0", "train_classifier", settings_case(
        "train_classifier", "data.image_size=0,0", fragments=["data.image_size=[0, 0]: expected [height, width]"])),
    Case("segmentation image_size 0,0", "train_segmentation", settings_case(
        "train_segmentation", "data.image_size=0,0", fragments=["data.image_size=[0, 0]: expected"])),
    Case("segmentation crop_size 0,0", "train_segmentation", settings_case(
        "train_segmentation", "data.crop_size=0,0", fragments=["data.crop_size=[0, 0]: expected"])),
    Case("mlt lr nan", "train_mlt_model", settings_case(
        "train_mlt_model", "optim.lr=nan", fragments=["optim.lr=nan: expected a number > 0"])),
    Case("classifier lr nan", "train_classifier", settings_case(
        "train_classifier", "optim.lr=nan", fragments=["optim.lr=nan: expected a number > 0"])),
    Case("segmentation lr inf", "train_segmentation", settings_case(
        "train_segmentation", "optim.lr=inf", fragments=["optim.lr=inf: expected a number > 0"])),
    Case("mlt task_specs 5.0 classes", "train_mlt_model", settings_case(
        "train_mlt_model", 'model.task_specs={"classification_rg": 5.0}',
        fragments=["model.task_specs.classification_rg=5.0: expected a whole number of outputs >= 1"])),
    Case("mlt task_specs 4 RG classes", "train_mlt_model", settings_case(
        "train_mlt_model", 'model.task_specs={"classification_rg": 4}',
        fragments=["model.task_specs.classification_rg=4: the rg target needs 5 output(s)"])),
    Case("mlt task_specs unknown target", "train_mlt_model", settings_case(
        "train_mlt_model", 'model.task_specs={"segmentation_xx": 1}',
        fragments=["model.task_specs.segmentation_xx: no segmentation target named 'xx'"])),
    Case("mlt run-name ''", "train_mlt_model", settings_case(
        "train_mlt_model", fragments=[f"run.name='': {RUN_NAME}"], name="")),
    Case("classifier run-name ''", "train_classifier", settings_case(
        "train_classifier", fragments=[f"run.name='': {RUN_NAME}"], name="")),
    Case("segmentation run-name ..", "train_segmentation", settings_case(
        "train_segmentation", fragments=[f"run.name='..': {RUN_NAME}"], name="..")),
    Case("classifier run-name a/b", "train_classifier", settings_case(
        "train_classifier", fragments=[f"run.name='a/b': {RUN_NAME}"], name="a/b")),
    Case("mlt validation 1.5", "train_mlt_model", settings_case(
        "train_mlt_model", "data.validation=1.5", fragments=["data.validation=1.5: expected a fraction in [0, 1)"])),
    Case("classifier seed -1", "train_classifier", settings_case(
        "train_classifier", "seed=-1", fragments=["seed=-1: expected an integer >= 0"])),
    Case("segmentation amp fp8", "train_segmentation", settings_case(
        "train_segmentation", "train.amp=fp8", fragments=["train.amp='fp8': expected one of 'auto'"])),
    Case("segmentation weight_decay -1", "train_segmentation", settings_case(
        "train_segmentation", "optim.weight_decay=-1", fragments=["optim.weight_decay=-1.0: expected a number >= 0"])),
    Case("classifier device tpu", "train_classifier", settings_case(
        "train_classifier", fragments=["device='tpu': expected auto, cpu, cuda, cuda:N or mps"], flags=["--device", "tpu"])),
    # data as other tools write it, and degenerate splits
    Case("check: 20000x20000 image", "check", check_case(huge_grading_image), code=1),
    Case("check: broken link mask", "check", check_case(broken_link_mask), code=1),
    Case("check: broken link image", "check", check_case(broken_link_image), code=1),
    Case("check: header-only test CSV", "check", check_case(header_only_test_csv), code=1),
    Case("classifier: 20000x20000 image", "train_classifier", data_case("train_classifier", huge_grading_image,
                                                                        name="new")),
    Case("segmentation: 20000x20000 image", "train_segmentation", data_case(
        "train_segmentation", huge_segmentation_image, name="new")),
    Case("segmentation: broken link mask", "train_segmentation", data_case(
        "train_segmentation", broken_link_mask, name="new")),
    Case("classifier: header-only test CSV, resumed run", "train_classifier", data_case(
        "train_classifier", header_only_test_csv, "train.epochs=2")),
    Case("mlt: header-only test CSV", "train_mlt_model", data_case("train_mlt_model", header_only_test_csv,
                                                                   name="new")),
    Case("classifier: validation leaves < 1 batch", "train_classifier", data_case(
        "train_classifier", too_few_for_a_batch, "data.validation=7", name="new")),
    Case("mlt: validation leaves < 1 batch", "train_mlt_model", data_case(
        "train_mlt_model", lambda root: ["train.batch_size=2", "fewer than one batch"], "data.validation=3",
        name="new")),
    # damaged or foreign run folders
    Case("predict: config.json a list", "predict", damage_run("classifier", config_a_list, "predict")),
    Case("predict: config.json not JSON", "predict", damage_run("multitask", config_not_json, "predict")),
    Case("predict: config.json without model", "predict", damage_run("segmentation", config_without_model, "predict")),
    Case("predict: zero-byte model.pth", "predict", damage_run("multitask", empty_weights, "predict")),
    Case("predict: truncated model.pth", "predict", damage_run("classifier", truncated_weights, "predict")),
    Case("predict: classifier weights in a segmentation run", "predict",
         damage_run("segmentation", classifier_weights, "predict")),
    Case("predict: classifier weights in a multitask run", "predict",
         damage_run("multitask", classifier_weights, "predict")),
    Case("predict: checkpoint as model.pth", "predict", damage_run("classifier", checkpoint_as_weights, "predict")),
    Case("compare: config.json a list", "compare", damage_run("segmentation", config_a_list, "compare")),
    Case("compare: zero-byte model.pth", "compare", damage_run("classifier", empty_weights, "compare")),
    Case("compare: segmentation weights in a multitask run", "compare",
         damage_run("multitask", segmentation_weights, "compare")),
    Case("compare: missing model.pth", "compare", damage_run("segmentation", missing_weights, "compare")),
    Case("resume: zero-byte checkpoint.pth", "train_classifier", resume_args("train_classifier", empty_checkpoint)),
    Case("resume: truncated checkpoint.pth", "train_classifier", resume_args("train_classifier", truncated_checkpoint)),
    Case("resume: weights as checkpoint.pth", "train_classifier", resume_args("train_classifier",
                                                                              weights_as_checkpoint)),
    Case("resume: a classifier run with the segmentation script", "train_segmentation",
         resume_args("train_segmentation", unchanged)),
    Case("resume: a classifier run with the multitask script", "train_mlt_model",
         resume_args("train_mlt_model", unchanged)),
    Case("resume: no checkpoint", "train_classifier", resume_args("train_classifier", no_checkpoint)),
    # --resume: a setting that fixes the run changed is refused before anything is loaded
    Case("resume: data.validation changed", "train_classifier", resume_args(
        "train_classifier", changed_setting("data.validation", 0.2, 0.3), "data.validation=0.3")),
    Case("resume: loss.task_weights changed", "train_classifier", resume_args(
        "train_classifier", changed_setting("loss.task_weights", {}, {"classification_rg": 2}),
        'loss.task_weights={"classification_rg": 2}')),
    Case("resume: seed changed", "train_classifier", resume_args(
        "train_classifier", changed_setting("seed", 0, 1), "seed=1")),
    Case("resume: image size changed", "train_classifier", resume_args(
        "train_classifier", changed_setting("data.image_size", "[64, 96]", "[96, 128]"), "data.image_size=96,128")),
    Case("resume: the data splits into other images", "train_classifier", data_case(
        "train_classifier", one_grading_image_fewer, "train.epochs=2")),
    # sizes bounded above
    Case("mlt grading_size 20000,20000", "train_mlt_model", settings_case(
        "train_mlt_model", "data.grading_size=20000,20000",
        fragments=["data.grading_size=[20000, 20000]: expected [height, width], integers >= 32 and <= 4608"])),
    Case("segmentation patches.working_size 9000,9000", "train_segmentation", settings_case(
        "train_segmentation", "data.patches.enabled=true", "data.patches.working_size=[9000,9000]",
        fragments=["data.patches.working_size=[9000, 9000]: expected None or [height, width], integers >= 32 and "
                   "<= 4608"])),
    # float masks
    Case("check: float mask with a NaN background", "check", check_case(float_mask), code=1),
    Case("segmentation: float mask", "train_segmentation", data_case("train_segmentation", float_mask, name="new")),
    # outputs that would write over a run
    Case("export: --out the run's model.pth", "export", output_case(
        "export", lambda run: run / "model.pth", "would write over {run}/model.pth, a record of the run {run}")),
    Case("export: --out the run's config (config.json beside)", "export", output_case(
        "export", lambda run: run / "config", "would write over {run}/config.json")),
    Case("export: --out the run's best.pth", "export", output_case(
        "export", lambda run: run / "best.pth", "would write over {run}/best.pth")),
    Case("predict: --out the run folder", "predict", output_case(
        "predict", lambda run: run, "is the run folder {run}")),
    Case("predict: --out the run's plots", "predict", output_case(
        "predict", lambda run: run / "plots", "would write over {run}/plots")),
    Case("compare: --out the run folder", "compare", output_case(
        "compare", lambda run: run, "is the run folder {run}")),
    Case("grid: --out a run folder", "grid", output_case("grid", lambda run: run, "is the run folder {run}")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_matrix(case, tree, saved, runs, capsys):
    argv, fragments = case.args(tree, saved, runs)
    code, stderr = call(case.tool, argv, capsys)
    assert code == case.code, stderr
    assert "Traceback" not in stderr, stderr
    if case.tool == "check":
        text = stderr  # check lists every problem, one per line
        assert "problem(s) in" in text, text
    else:
        text = error_line(stderr)
    for fragment in fragments:
        assert str(fragment) in text, text


def test_matrix_covers_every_tool():
    assert {case.tool for case in CASES} == {"check", "predict", "compare", "export", "grid", *SCRIPTS}
    assert len(CASES) >= 40


# ----------------------------------------------------------------------------- the notebooks' run loader
@pytest.mark.parametrize("damage", [config_a_list, config_not_json, empty_weights, truncated_weights,
                                    classifier_weights, checkpoint_as_weights, missing_weights])
@pytest.mark.parametrize("loader", [load_run, open_run])
def test_run_loader_names_the_damage(runs, damage, loader):
    folder = runs["segmentation"] if damage is classifier_weights else runs["multitask"]
    fragments = damage(folder, runs)
    with pytest.raises(RunError) as raised:
        loader(folder, "cpu")
    for fragment in fragments:
        assert str(fragment) in str(raised.value)


# ----------------------------------------------------------------------------- subprocesses (as users run them)
def test_subprocess_cases(tree, saved, runs):
    """A few matrix cases as real command lines: exit code 2 and the `error:` line, for each kind of tool."""
    commands = [
        ([sys.executable, "train_mlt_model.py", *train_argv("train_mlt_model", tree, saved.folder,
                                                             "optim.lr=nan")], 2, "optim.lr=nan: expected"),
        ([sys.executable, "predict.py", *damage_run("multitask", classifier_weights, "predict")(tree, saved, runs)[0]],
         2, "the weights of a classifier run"),
    ]
    for command, code, fragment in commands:
        result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == code, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: ") and fragment in result.stderr
    result = subprocess.run([sys.executable, "-m", "codebase.data.idrid", "check", str(tree)], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    path = huge_grading_image(tree)[0]
    result = subprocess.run([sys.executable, "-m", "codebase.data.idrid", "check", str(tree)], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and f"{path}: image too large to decode safely" in result.stderr
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- files as other tools write them
def test_upper_case_suffixes_are_found_and_read(tree, capsys):
    image = idrid.grading_image_path(tree, "train", "IDRiD_004")
    image.rename(image.with_suffix(".JPG"))
    segmentation = idrid.segmentation_image_path(tree, "train", "IDRiD_02")
    segmentation.rename(segmentation.with_suffix(".JPG"))
    mask = idrid.segmentation_mask_path(tree, "train", "IDRiD_02", "OD")
    mask.rename(mask.with_suffix(".TIF"))
    assert call("check", [str(tree)], capsys)[0] == 0
    grading = {record.name: record for record in idrid.grading_records(tree, "train")}
    assert grading["IDRiD_004"].image_path == image.with_suffix(".JPG")
    record = {r.name: r for r in idrid.segmentation_records(tree, "train")}["IDRiD_02"]
    assert record.image_path == segmentation.with_suffix(".JPG")
    assert record.mask_paths["OD"] == mask.with_suffix(".TIF")
    assert read_mask(record.mask_paths["OD"]).any()


def test_rgba_mask_with_an_opaque_alpha_reads_its_colour(tree, capsys):
    path = idrid.segmentation_mask_path(tree, "train", "IDRiD_01", "OD")
    truth = read_mask(path)
    assert 0 < truth.mean() < 0.5
    rgba = np.zeros((*truth.shape, 4), np.uint8)
    rgba[..., 0] = truth * 255  # lesion in red, as an image editor saves it
    rgba[..., 3] = 255  # opaque everywhere
    Image.fromarray(rgba, "RGBA").save(path)
    np.testing.assert_array_equal(read_mask(path), truth)
    transparent = rgba.copy()
    transparent[..., 3] = truth * 255  # lesion drawn on a transparent background
    Image.fromarray(transparent, "RGBA").save(path)
    np.testing.assert_array_equal(read_mask(path), truth)
    assert call("check", [str(tree)], capsys)[0] == 0


def test_16_bit_png_is_scaled_not_clipped(tmp_path, run_folders, synthetic_root, capsys):
    eight = np.asarray(read_image(idrid.grading_image_path(synthetic_root, "test", "IDRiD_001")).convert("L"))
    sixteen = eight.astype(np.uint16) * 257  # the same picture, 16 bits per pixel
    Image.fromarray(sixteen).save(tmp_path / "photo16.png")
    Image.fromarray(eight).save(tmp_path / "photo8.png")
    with Image.open(tmp_path / "photo16.png") as image:
        assert image.mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "photo16.png")),
                                  np.asarray(read_image(tmp_path / "photo8.png")))
    results = {}
    for name in ("photo8.png", "photo16.png"):
        out = tmp_path / name.replace(".png", "_out")
        code = predict.main(["--run", str(run_folders["classifier"]), str(tmp_path / name), "--device", "cpu",
                             "--out", str(out)])
        assert code == 0, capsys.readouterr().err
        results[name] = json.loads((out / "predictions.json").read_text())["images"][0]["grades"]
    assert results["photo8.png"] == results["photo16.png"]


def test_float_and_huge_images_given_to_predict_are_named(tmp_path, run_folders, capsys):
    Image.fromarray(np.random.rand(64, 64).astype(np.float32), "F").save(tmp_path / "float.tif")
    bomb_jpeg(tmp_path / "huge.jpg")
    code, stderr = call("predict", ["--run", str(run_folders["classifier"]), str(tmp_path / "float.tif"),
                                    str(tmp_path / "huge.jpg"), "--device", "cpu", "--out", str(tmp_path / "out")],
                        capsys)
    assert code == 1 and "Traceback" not in stderr
    assert f"error: {tmp_path / 'float.tif'}: floating-point image, expected 8- or 16-bit pixels" in stderr
    assert f"error: {tmp_path / 'huge.jpg'}: image too large to decode safely" in stderr


# ----------------------------------------------------------------------------- two processes on one run folder
def test_a_run_folder_in_use_is_refused_with_its_holder(tree, saved, capsys):
    lock = FolderLock(saved.run)
    lock.acquire()
    saved.freeze()
    try:
        for script in SCRIPTS:
            code, stderr = call(script, train_argv(script, tree, saved.folder, "train.epochs=2"), capsys)
            assert code == 2, stderr
            assert error_line(stderr).startswith(f"error: {saved.run}: run folder in use by process {os.getpid()} "
                                                 f"on host {socket.gethostname()}")
        result = subprocess.run([sys.executable, "train_classifier.py", *train_argv(
            "train_classifier", tree, saved.folder, "train.epochs=2")], cwd=REPO, env=ENV, capture_output=True,
            text=True, timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"{saved.run}: run folder in use by process {os.getpid()}" in result.stderr.splitlines()[-1]
    finally:
        lock.release()
    saved.freeze()  # the lock file is gone again


def test_stale_lock_of_a_killed_run_is_taken_over(tree, saved, capsys):
    (saved.run / LOCK_FILE).write_text("process 999999 on host gone (since 2020-01-01 00:00:00)\n")
    code, stderr = call("train_classifier", train_argv("train_classifier", tree, saved.folder, "train.epochs=2"),
                        capsys)
    assert code == 0, stderr
    log = (saved.run / "train_log.txt").read_text()
    assert "took over the lock left by process 999999 on host gone" in log
    assert "epoch 2/2" in log and not (saved.run / LOCK_FILE).exists()
    saved.freeze()


def test_two_trainings_with_one_run_name(tmp_path):
    """The toy run trains; a second one with the same folder exits 2 naming the folder and the first's PID."""
    toy = [sys.executable, "-c", "import sys, harness_toy; from codebase.errors import run_main; "
           "from codebase.config import parse_cli; sys.argv[0] = 'harness_toy.py'; "
           "run_main(harness_toy.main, lambda: parse_cli(harness_toy.CONFIG, sys.argv[1:]))",
           "--set", f"run.save_dir={tmp_path}", "--set", "train.epochs=500", "--set", "toy.print_steps=true"]
    first = subprocess.Popen(toy, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in first.stdout:
            if line.startswith("step 1 "):
                break
        second = subprocess.run(toy, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second started"
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"error: {tmp_path / 'toy'}: run folder in use by process {first.pid} on host")
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert first.returncode == 130
    assert not (tmp_path / "toy" / LOCK_FILE).exists()


# ----------------------------------------------------------------------------- resource limits
def test_file_size_limit_while_writing_a_checkpoint(tree, saved):
    """Resume for a second epoch under a 1 MB file-size limit: best.pth / checkpoint.pth cannot be
    written; one `error:` line says so and how to resume, and the earlier run is as it was."""
    saved.freeze()

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))

    result = subprocess.run([sys.executable, "train_classifier.py", *train_argv(
        "train_classifier", tree, saved.folder, "train.epochs=2")],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert line.startswith(f"error: {saved.run}/") and "could not be written: the file-size limit was reached" in line
    assert "checkpoint.pth keeps epoch 1" in line and "--resume" in line
    assert load_checkpoint(saved.run / "checkpoint.pth")["epoch"] == 1


def test_full_disk_keeps_the_previous_file(tmp_path):
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(b"previous")

    def write(file):
        file.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(StorageError, match="no space left on the device .* its previous version is intact"):
        atomic_write(path, write)
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["checkpoint.pth"]


def test_fp16_on_the_cpu_warns(capsys):
    make_grad_scaler(torch.device("cpu"), "fp16")
    assert "warning: train.amp='fp16' on the CPU" in capsys.readouterr().err
    make_grad_scaler(torch.device("cpu"), "auto")
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- machine faults under torchrun
TOY = str(REPO / "tests" / "harness_toy.py")


def torchrun(*arguments):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *arguments], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(process, timeout=300):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def outcome(folder: Path):
    weights = torch.load(folder / "model.pth", weights_only=True)
    history = [{key: value for key, value in entry.items() if key != "time"}
               for entry in json.loads((folder / "history.json").read_text())]
    return weights, history, json.loads((folder / "test_metrics.json").read_text())


def assert_same_outcome(folder, reference):
    weights, history, tested = outcome(folder)
    assert history == reference[1] and tested == reference[2]
    assert all(torch.equal(weights[name], reference[0][name]) for name in reference[0])


@pytest.fixture(scope="module")
def two_process_reference(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("reference")
    finished(torchrun("--standalone", "--nproc_per_node=2", TOY, "--set", f"run.save_dir={save_dir}"))
    return outcome(save_dir / "toy")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_killed_worker_is_restarted_and_continues_exactly(tmp_path, two_process_reference):
    """Rank 1 is SIGKILLed once in epoch 2; torchrun restarts the group (--max-restarts=1), which
    resumes from the checkpoint of epoch 1 and ends with the uninterrupted run's weights and metrics."""
    marker = tmp_path / "killed"
    output = finished(torchrun("--standalone", "--nproc_per_node=2", "--max-restarts=1", TOY,
                               "--set", f"run.save_dir={tmp_path}", "--set", "toy.kill_rank_at=[1,2,1]",
                               "--set", f"toy.kill_marker={marker}"))
    assert marker.read_text() == "killed at epoch 2 step 1\n"
    log = (tmp_path / "toy" / "train_log.txt").read_text()
    assert log.count("2 process(es)") == 2 and "resumed from" in log and "after epoch 1" in log, output[-3000:]
    assert_same_outcome(tmp_path / "toy", two_process_reference)
    assert not (tmp_path / "toy" / LOCK_FILE).exists()


def test_two_nodes_equal_one_node_with_two_processes(tmp_path, two_process_reference):
    """Two torchrun agents as two nodes of one process each (c10d rendezvous), as the README shows."""
    port = free_port()
    agents = [torchrun("--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
                       f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=toy", TOY, "--set", f"run.save_dir={tmp_path}")
              for _ in range(2)]
    for agent in agents:
        finished(agent)
    assert "2 process(es)" in (tmp_path / "toy" / "train_log.txt").read_text()
    assert_same_outcome(tmp_path / "toy", two_process_reference)


# ----------------------------------------------------------------------------- a failed resume, as users run it
# Every case below runs a train script's command line (a few as subprocesses, the rest in-process
# through the script's entry point) next to the folder of a finished earlier
# multi-task run (saved/mlt_demo, the multi-task demo's run name) and checks that the script names
# the file or the setting and what was expected, and that the earlier run's folder is exactly as it
# was with nothing new beside it. Multi-task cases with bad data continue the earlier run for a
# second epoch, so the run resumes, rewrites config.json and appends to its log before the bad file
# is read: the failed start must undo that.

RUN = "mlt_demo"
SUBPROCESS_TINY = {
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


def run_script(script, data_root, save_dir, *sets, capsys=None):
    """`python <script> --demo` on `data_root` into `save_dir` with the tiny settings and `sets`: a
    subprocess, or with `capsys` the same command line in-process through the script's entry point
    (`run_main`, as its `__main__` calls it), which saves a new interpreter's ~8 s of imports."""
    overrides = [arg for item in [f"run.save_dir={save_dir}", *SUBPROCESS_TINY[script], *sets] for arg in ("--set", item)]
    argv = ["--demo", "--data-root", str(data_root), *overrides]
    if capsys is None:
        return subprocess.run([sys.executable, str(REPO / script), *argv],
                              cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    code, stderr = call(Path(script).stem, argv, capsys)
    return subprocess.CompletedProcess(script, code, "", stderr)


def linked_state(folder):
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
def resumed(earlier_run, tmp_path):
    """A save_dir holding a copy of the earlier run; after the test, that copy must be unchanged."""
    save_dir = tmp_path / "saved"

    def copy(source, target):
        (os.link if Path(source).name in LINKED else shutil.copy2)(source, target)

    shutil.copytree(earlier_run, save_dir / RUN, copy_function=copy)
    before = linked_state(save_dir / RUN)
    yield save_dir
    assert linked_state(save_dir / RUN) == before, "the earlier run's files changed"
    assert sorted(os.listdir(save_dir)) == [RUN], "the failed run left files behind"


def assert_error(result, *fragments):
    """Exit code 2 and a last stderr line `error: ...` holding every fragment, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), result.stderr
    for fragment in fragments:
        assert str(fragment) in line, line


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
def test_bad_data_is_named_and_the_resumed_run_is_left_as_it_was(tree, resumed, break_tree, capsys):
    fragments = break_tree(tree)
    in_process = None if break_tree is missing_split else capsys  # one case as a real subprocess
    assert_error(run_script("train_mlt_model.py", tree, resumed, NEXT_EPOCH, capsys=in_process), *fragments)


def test_missing_data_root(resumed, tmp_path, capsys):
    root = tmp_path / "nowhere"
    # run.demo=false: the demo's settings, without generating a synthetic tree at the missing root
    result = run_script("train_mlt_model.py", root, resumed, NEXT_EPOCH, "run.demo=false", capsys=capsys)
    assert_error(result, root, "data root not found, expected a folder holding 'A. Segmentation'")
    assert not root.exists()


def test_greyscale_and_cmyk_images_are_converted(tree, resumed, capsys):
    for path, mode in ((idrid.grading_image_path(tree, "test", "IDRiD_001"), "L"),
                       (idrid.segmentation_image_path(tree, "test", "IDRiD_05"), "CMYK")):
        with Image.open(path) as image:
            image.convert(mode).save(path)
        with Image.open(path) as image:
            assert image.mode == mode
    result = run_script("train_mlt_model.py", tree, resumed, "run.name=converted", capsys=capsys)
    assert result.returncode == 0, result.stderr
    shutil.rmtree(resumed / "converted")  # the fixture checks nothing else was written


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
def test_bad_setting_is_named(synthetic_root, resumed, script, setting, fragments, capsys):
    in_process = None if setting == "model.num_expert=2" else capsys  # one case as a real subprocess
    assert_error(run_script(script, synthetic_root, resumed, setting, capsys=in_process), *fragments)


def test_unwritable_output_folder(synthetic_root, resumed, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # root may write anywhere, but not below a regular file
    result = run_script("train_mlt_model.py", synthetic_root, resumed, f"run.save_dir={blocker / 'sub'}",
                        capsys=capsys)
    assert_error(result, f"cannot write the run folder {blocker / 'sub' / RUN}", "run.save_dir")


def test_classifier_names_a_truncated_image_read_by_a_worker(tree, resumed):
    fragments = truncated_jpeg(tree)
    assert_error(run_script("train_classifier.py", tree, resumed, "data.num_workers=1"), *fragments)


def test_segmentation_names_an_empty_mask(tree, resumed, capsys):
    fragments = empty_tiff(tree)
    assert_error(run_script("train_segmentation.py", tree, resumed, capsys=capsys), *fragments)


# ----------------------------------------------------------------------------- in-process


def test_failed_start_removes_the_folders_it_created(tmp_path):
    config = {"device": "cpu", "run": {"name": "new", "save_dir": str(tmp_path / "made" / "here")}}
    with pytest.raises(idrid.IDRiDError):
        with Run(config) as run:
            assert (run.folder / "config.json").is_file()
            raise idrid.IDRiDError("bad data")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- --resume applies what may change
def test_resume_applies_a_changed_learning_rate_to_the_restored_optimizer(earlier, tmp_path, synthetic_root, capsys):
    """optim.lr may change on resume: the restored optimizer trains the next epoch at the new rate
    (history, checkpoint and config.json agree), and the log says it was applied."""
    save_dir = tmp_path / "saved"
    shutil.copytree(earlier, save_dir / EARLIER)
    assert load_checkpoint(save_dir / EARLIER / "checkpoint.pth")["optimizer"]["param_groups"][0]["lr"] == 1e-3
    code, stderr = call("train_classifier", train_argv("train_classifier", synthetic_root, save_dir, "train.epochs=2",
                                                       "optim.lr=0.01") + ["--resume"], capsys)
    assert code == 0, stderr
    folder = save_dir / EARLIER
    history = json.loads((folder / "history.json").read_text())
    assert [entry["lr"] for entry in history] == [1e-3, 0.01]
    groups = load_checkpoint(folder / "checkpoint.pth")["optimizer"]["param_groups"]
    assert [group["initial_lr"] for group in groups] == [0.01, 1e-3]  # heads: optim.lr; backbone: backbone_lr
    assert json.loads((folder / "config.json").read_text())["optim"]["lr"] == 0.01
    log = (folder / "train_log.txt").read_text()
    assert "setting changed since the checkpoint, applied: optim.lr: 0.001 (checkpoint) -> 0.01 (now)" in log


# ----------------------------------------------------------------------------- photographs as viewers show them
def exif_rotated_jpeg(path: Path, orientation: int = 6) -> np.ndarray:
    """A 256x192 (stored) photograph whose EXIF says to show it turned (192x256); returns it as shown."""
    stored = np.zeros((192, 256, 3), np.uint8)
    stored[..., 0] = np.linspace(0, 255, 256, dtype=np.uint8)[None, :]
    stored[:48, :64] = (0, 255, 0)  # a marker in the stored top-left corner
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif)
    return np.rot90(stored, k=-1)  # orientation 6: turned a quarter clockwise to show


def test_exif_orientation_is_applied_before_anything_else(tmp_path, run_folders, capsys):
    shown = exif_rotated_jpeg(tmp_path / "turned.jpg")
    assert read_image(tmp_path / "turned.jpg").size == (192, 256)
    assert np.abs(np.asarray(read_image(tmp_path / "turned.jpg"), np.int16) - shown).mean() < 4
    out = tmp_path / "out"
    code, stderr = call("predict", ["--run", str(run_folders["segmentation"]), str(tmp_path / "turned.jpg"),
                                    "--device", "cpu", "--out", str(out)], capsys)
    assert code == 0, stderr
    record = json.loads((out / "predictions.json").read_text())["images"][0]
    assert record["size"] == [256, 192]  # [H, W] as shown
    for lesion in ("MA", "HE", "EX", "SE", "OD"):
        with Image.open(out / "turned" / f"mask_{lesion}.png") as mask:
            assert mask.size == (192, 256)


def test_an_animated_image_gives_its_first_frame_with_a_warning(tmp_path, run_folders, capsys):
    frames = [Image.new("RGB", (96, 64), colour) for colour in ((200, 40, 20), (0, 0, 255))]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match="an animated image of 2 frames; its first frame is used"):
        first = np.asarray(read_image(tmp_path / "moving.gif"))
    assert first.shape == (64, 96, 3) and first[0, 0, 2] < 100
    with pytest.warns(UserWarning, match=f"{tmp_path / 'moving.gif'}: an animated image"):
        code, stderr = call("predict", ["--run", str(run_folders["classifier"]), str(tmp_path / "moving.gif"),
                                        "--device", "cpu", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, stderr


# ----------------------------------------------------------------------------- bounded memory
def strip_png(path: Path, width: int, height: int) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def peak_memory_mb(command) -> tuple[float, subprocess.CompletedProcess]:
    """(peak resident memory of the command's process in MB (ru_maxrss), its result)."""
    code = ("import resource, subprocess, sys; result = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stderr.write(result.stderr); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); sys.exit(result.returncode)")
    result = subprocess.run([sys.executable, "-c", code, *command], cwd=REPO, env=ENV, capture_output=True,
                            text=True, timeout=300)
    return float(result.stdout.strip().splitlines()[-1]), result


STRIP_BOUND_MB = 300  # what a 20 x 20000 strip may cost beyond a 96 x 64 photograph


def test_a_strip_image_costs_bounded_memory(tmp_path, run_folders):
    """A 20 x 20000 image (400 k pixels) once took 20 GB (an overlay figure 8 x 8000 inches): its
    overlay now fits a fixed pixel box, and predict.py's peak memory on it stays within
    STRIP_BOUND_MB of its peak on a small photograph."""
    strip_png(tmp_path / "strip.png", 20, 20000)
    strip_png(tmp_path / "small.png", 96, 64)
    peaks = {}
    for name in ("small", "strip"):
        peaks[name], result = peak_memory_mb([sys.executable, "predict.py", "--run", str(run_folders["segmentation"]),
                                              str(tmp_path / f"{name}.png"), "--device", "cpu", "--sliding", "off",
                                              "--out", str(tmp_path / f"out_{name}")])
        assert result.returncode == 0, result.stderr
    print(f"peak resident memory: small photograph {peaks['small']:.0f} MB, 20x20000 strip {peaks['strip']:.0f} MB")
    assert peaks["strip"] - peaks["small"] < STRIP_BOUND_MB, peaks
    with Image.open(tmp_path / "out_strip" / "strip" / "overlay.png") as overlay_png:
        assert overlay_png.size[0] * overlay_png.size[1] <= predict.OVERLAY_WIDTH * predict.OVERLAY_DPI * (
            predict.OVERLAY_MAX_SIDE + 90)
    with Image.open(tmp_path / "out_strip" / "strip" / "mask_OD.png") as mask:
        assert mask.size == (20, 20000)  # the masks keep the input's resolution


@pytest.mark.parametrize("width, height", [(20, 20000), (20000, 20), (4000, 3000), (1, 1)])
def test_the_overlay_figure_fits_a_fixed_pixel_box(tmp_path, width, height):
    strip_png(tmp_path / "image.png", width, height)
    masks = {"OD": np.zeros((height, width), np.uint8)}
    figure = predict.draw_overlay(tmp_path / "image.png", masks, "caption")
    pixels_wide, pixels_tall = figure.get_size_inches() * figure.dpi
    assert pixels_wide == predict.OVERLAY_WIDTH * predict.OVERLAY_DPI
    assert pixels_tall <= predict.OVERLAY_MAX_SIDE + 0.9 * predict.OVERLAY_DPI + 1


# ----------------------------------------------------------------------------- every entry point ends in one line
def test_outputs_that_cannot_be_written_are_named_as_storage_errors(tmp_path, run_folders):
    """A file-size limit below the overlay's size: predict.py names the file it could not write (not
    the input), exits 2 in one line, and the run folder is untouched."""
    strip_png(tmp_path / "photo.png", 96, 64)
    before = state(run_folders["segmentation"])

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))

    result = subprocess.run([sys.executable, "predict.py", "--run", str(run_folders["segmentation"]),
                             str(tmp_path / "photo.png"), "--device", "cpu", "--out", str(tmp_path / "out")],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {tmp_path / 'out' / 'photo' / 'overlay.png'}: could not be written: "
                           "the file-size limit was reached"), line
    assert state(run_folders["segmentation"]) == before


def test_a_damaged_finished_run_in_a_grid_is_named(tree, tmp_path, capsys):
    folder = tmp_path / "grids" / "smoke" / "classifier" / "seed_0"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"train": {"epochs": 1}}')  # no data section
    (folder / "history.json").write_text('[{"epoch": 1}]')
    (folder / "model.pth").write_bytes(b"weights")
    before = state(tmp_path / "grids")
    code, stderr = call("grid", ["smoke", "--seeds", "1", "--data-root", str(tree), "--out", str(tmp_path / "grids")],
                        capsys)
    assert code == 2 and "Traceback" not in stderr
    assert error_line(stderr).startswith(f"error: {folder / 'config.json'}: a finished run's config.json that "
                                         "cannot be read"), stderr
    assert state(tmp_path / "grids") == before


def test_the_synthetic_tool_names_its_bad_arguments_and_unwritable_places(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for arguments, fragment in ((["--seg-train", "-1"], "--seg-train: '-1': expected a number of images, 0 or more"),
                                (["--size", "20000x20"], "expected at most 4608 pixels a side"),
                                ([], f"{blocker / 'tree'}: Not a directory")):
        result = subprocess.run([sys.executable, "-m", "codebase.data.synthetic", str(blocker / "tree"), *arguments],
                                cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "error: " in result.stderr.strip().splitlines()[-1] and fragment in result.stderr, result.stderr


def start_training(save_dir, root, *sets):
    """A classifier training as a subprocess, slow enough per step to interrupt mid-epoch."""
    argv = train_argv("train_classifier", root, save_dir, "train.epochs=3", "data.image_size=192,288",
                      "train.batch_size=8", *sets, name="x")
    return subprocess.Popen([sys.executable, "-u", "train_classifier.py", *argv], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(stream, text):
    for line in stream:
        if text in line:
            return line
    raise AssertionError(f"{text!r} never came")


def test_a_second_interrupt_ends_in_one_line(tmp_path, synthetic_root):
    process = start_training(tmp_path / "saved", synthetic_root)
    wait_for(process.stdout, "epoch 1/3")
    process.send_signal(signal.SIGINT)
    wait_for(process.stderr, "stopping after the current step")
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130, rest
    assert "Traceback" not in rest and rest.strip().splitlines()[-1].startswith("interrupted: stopped at once"), rest
    assert load_checkpoint(tmp_path / "saved" / "x" / "checkpoint.pth")["epoch"] == 1


def test_the_resume_command_printed_after_an_interrupt_works_as_printed(tmp_path, synthetic_root):
    """Started with --set run.name=x --set run.resume=false (which win over --run-name and --resume),
    interrupted in epoch 2: the printed command resumes this run, not a new one."""
    process = start_training(tmp_path / "saved", synthetic_root, "run.name=x", "run.resume=false")
    wait_for(process.stdout, "epoch 1/3")
    process.send_signal(signal.SIGINT)
    output, errors = process.communicate(timeout=120)
    assert process.returncode == 130, errors
    printed = wait_for(iter(output.splitlines()), "Resume with: ").split("Resume with: ", 1)[1]
    resumed = subprocess.run(shlex.split(printed), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(os.listdir(tmp_path / "saved")) == ["x"]
    log = (tmp_path / "saved" / "x" / "train_log.txt").read_text()
    assert f"resumed from {tmp_path / 'saved' / 'x' / 'checkpoint.pth'} after epoch 1" in log
    assert [entry["epoch"] for entry in json.loads((tmp_path / "saved" / "x" / "history.json").read_text())] == [1, 2, 3]


def test_under_torchrun_a_bad_setting_is_reported_once(tmp_path):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "train_classifier.py", "--device", "cpu", "--set", "optim.lr=nan",
                             "--set", f"run.save_dir={tmp_path}"],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert [line for line in output.splitlines() if line.startswith("error: ")] == [
        "error: optim.lr=nan: expected a number > 0"], output
    failure = output[output.index("Root Cause"):]
    assert "rank      : 0" in failure and "exitcode  : 2" in failure, failure  # as a single process: 2
    assert os.listdir(tmp_path) == []
