"""Patch training and full-resolution evaluation wired into train_segmentation.py and train_mlt_model.py."""
import json
import math

import pytest

import train_mlt_model
import train_segmentation
from codebase.config import ConfigError, parse_cli, with_defaults
from codebase.data.idrid import LESIONS
from codebase.data.synthetic import generate
from codebase.evaluation.fullres import fullres_metrics
from inference.runs import load_run

pytestmark = pytest.mark.slow  # trains tiny models

METRICS = ("aupr", "dice", "iou", "sensitivity", "precision")


@pytest.fixture(scope="module")
def native_root(tmp_path_factory):
    """Segmentation images 96x144 (native), 6 for training (2 carved for validation), 2 for test."""
    return generate(tmp_path_factory.mktemp("fullres") / "data", seed=1, size=(144, 96), seg_train=6, seg_test=2,
                    grade_train=10, grade_test=5)


def segmentation_config(root, save_dir, *sets):
    argv = ["--demo", "--device", "cpu", "--data-root", str(root), "--run-name", "tiny",
            "--set", f"run.save_dir={save_dir}", "--set", "model.aspp_channels=16",
            "--set", "model.decoder_channels=16", "--set", "train.batch_size=2", "--set", "train.epochs=1",
            "--set", "run.plots=false"]
    for assignment in sets:
        argv += ["--set", assignment]
    config = parse_cli(train_segmentation.CONFIG, argv, train_segmentation.DEMO, validate=train_segmentation.validate)
    config["data"]["validation"] = 2  # images (--set would read a float, as the default is one)
    return config


def assert_equal_metrics(fullres, resized, lesions=LESIONS, tolerance=1e-3):
    """At the native working size the full-resolution figures are the working-resolution ones."""
    for lesion in lesions:
        for name in METRICS:
            a, b = fullres[lesion][f"{name}_fullres"], resized[lesion][name]
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tolerance, (lesion, name, a, b)


def test_patch_run_trains_on_crops_and_writes_fullres_test_metrics(native_root, tmp_path):
    config = segmentation_config(native_root, tmp_path, "data.patches.enabled=true",
                                 "data.patches.crop_size=64,64", "data.patches.crops_per_image=3")
    train_segmentation.main(config)
    folder = tmp_path / "tiny"
    assert "12 training" in (folder / "train_log.txt").read_text()  # 4 images x 3 crops per image
    tested = json.loads((folder / "test_metrics.json").read_text())["last"]["metrics"]["segmentation"]
    assert tested["resolution"] == "sliding window 64x64 over 96x144"
    assert {f"{name}_fullres" for name in METRICS} <= set(tested["MA"])
    assert_equal_metrics(tested, tested)  # native working size: the masks are the original ones
    history = json.loads((folder / "history.json").read_text())
    assert not any(key.endswith("_fullres") for key in history[-1]["validation"]["segmentation"])  # "final"
    # The saved weights, scored again through the function comparisons call, give the same figures.
    run = load_run(folder, weights="last")
    again = fullres_metrics(lambda images: run.model(images), native_root, "test", window=(64, 64))
    for lesion in LESIONS:
        assert again[lesion]["dice_fullres"] == pytest.approx(tested[lesion]["dice_fullres"], abs=1e-6, nan_ok=True)
    log = (folder / "train_log.txt").read_text()
    assert "the same at the original resolution of the masks" in log


def test_resized_run_evaluates_full_resolution_every_time(native_root, tmp_path):
    config = segmentation_config(native_root, tmp_path, "data.image_size=48,72", "data.crop_size=48,72",
                                 "train.fullres_eval=every")
    history = train_segmentation.main(config)
    validation = history[-1]["validation"]["segmentation"]
    assert validation["resolution"] == "resized 48x72" and "mean_aupr_fullres" in validation
    tested = json.loads((tmp_path / "tiny" / "test_metrics.json").read_text())["last"]["metrics"]["segmentation"]
    assert "aupr_fullres" in tested["OD"] and "aupr" in tested["OD"]


def test_fullres_off_writes_no_fullres_metrics(native_root, tmp_path):
    config = segmentation_config(native_root, tmp_path, "data.image_size=48,72", "data.crop_size=48,72",
                                 "train.fullres_eval=off")
    train_segmentation.main(config)
    tested = json.loads((tmp_path / "tiny" / "test_metrics.json").read_text())["last"]["metrics"]["segmentation"]
    assert "mean_aupr_fullres" not in tested and "aupr_fullres" not in tested["MA"]


def mlt_config(root, save_dir, *sets):
    tiny = ["data.grading_size=64,96", "data.segmentation_size=64,96", "model.aspp_channels=16",
            "model.decoder_channels=16", "model.head_hidden=16", "train.epochs=1", "train.iterations=2",
            "train.batch_size=2", "train.eval_batch_size=2", "run.plots=false", *sets]
    argv = ["--demo", "--device", "cpu", "--data-root", str(root), "--set", f"run.save_dir={save_dir}"]
    for assignment in tiny:
        argv += ["--set", assignment]
    config = parse_cli(train_mlt_model.CONFIG, argv, train_mlt_model.DEMO, validate=train_mlt_model.validate)
    config["data"]["validation"] = 2
    return config


def test_multitask_patch_run_scores_lesions_at_full_resolution(native_root, tmp_path):
    config = mlt_config(native_root, tmp_path, "data.patches.enabled=true", "data.patches.crop_size=64,64",
                        "data.patches.crops_per_image=2", "train.fullres_eval=every")
    history = train_mlt_model.main(config)
    validation = history[-1]["validation"]
    assert "rg_kappa" in validation["grading"]  # grading keeps whole resized images
    assert validation["segmentation"]["resolution"] == "sliding window 64x64 over 96x144"
    assert_equal_metrics(validation["segmentation"], validation["segmentation"])
    tested = json.loads((tmp_path / "mlt_demo" / "test_metrics.json").read_text())["last"]["metrics"]
    assert {f"{name}_fullres" for name in METRICS} <= set(tested["segmentation"]["EX"])


@pytest.mark.parametrize("script", [train_segmentation, train_mlt_model], ids=lambda s: s.__name__)
@pytest.mark.parametrize("key, value, message", [
    ("data.patches.crop_size", [256, 256], "no larger than data.patches.working_size"),
    ("data.patches.lesion_share", 1.5, "a number in"),
    ("data.patches.centre_weights.MA", 0, "a number > 0"),
    ("data.patches.lesion_position", "edge", "one of 'centre', 'anywhere'"),
    ("data.patches.overlap", 1.0, "a number in"),
    ("data.patches.crops_per_image", 0, "an integer"),
    ("data.patches.working_size", [16, 16], "integers >= 32"),
    ("train.fullres_eval", "sometimes", "one of"),
])
def test_bad_patch_and_fullres_settings_are_refused_by_name(script, key, value, message):
    config = with_defaults(script.CONFIG)
    config["data"]["patches"]["working_size"] = [128, 192]
    *parents, leaf = key.split(".")
    section = config
    for name in parents:
        section = section[name]
    section[leaf] = value
    with pytest.raises(ConfigError, match=f"^{key}=.*{message}"):
        script.validate(config)


def test_a_native_working_size_smaller_than_the_crop_is_refused_before_training(native_root, tmp_path):
    config = segmentation_config(native_root, tmp_path, "data.patches.enabled=true", "data.patches.crop_size=128,128")
    with pytest.raises(ConfigError, match=r"data\.patches\.crop_size=\[128, 128\]: larger than .*96x144 native"):
        train_segmentation.main(config)
