"""predict.py on new images (two sizes, greyscale, one corrupt file) and compare_models.py on three
tiny runs, each script run as a user runs it: a subprocess on the command line (predict.py on the
classifier run through its main, the same command line in-process)."""
import base64
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_training import ENV, REPO

import compare_models
import predict
from codebase.data.idrid import LESIONS, grading_records, segmentation_records
from inference.predictor import forward_passes
from inference.report import SECTIONS as REPORT_SECTIONS
from inference.runs import open_run

pytestmark = pytest.mark.slow  # trains models or runs scripts in subprocesses


@pytest.fixture(scope="module")
def inputs(synthetic_root, tmp_path_factory):
    """A folder with a JPEG at the synthetic size, a larger PNG, a greyscale TIFF and a corrupt JPEG."""
    folder = tmp_path_factory.mktemp("inputs")
    source = grading_records(synthetic_root, "test")[0].image_path
    image = Image.open(source).convert("RGB")
    image.save(folder / "fundus.jpg")
    image.resize((250, 170)).save(folder / "larger.png")
    image.convert("L").resize((150, 100)).save(folder / "grey.tif")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    return folder


def run_script(script, *args, capsys=None):
    """`python <script> args` as a subprocess, or with ``capsys`` in-process through the script's ``main``."""
    if capsys is None:
        return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                              env=ENV, cwd=REPO, timeout=300)
    capsys.readouterr()
    code = {"predict.py": predict, "compare_models.py": compare_models}[script].main([str(arg) for arg in args])
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(script, code, printed.out, printed.err)


@pytest.mark.parametrize("kind", ["multitask", "classifier"])
def test_predict_writes_outputs_at_each_inputs_size_and_reports_the_corrupt_file(kind, tiny_runs, inputs, tmp_path,
                                                                                 capsys):
    in_process = None if kind == "multitask" else capsys  # the multi-task run as a real subprocess
    finished = run_script("predict.py", "--run", tiny_runs[kind], inputs, "--out", tmp_path, "--device", "cpu",
                          capsys=in_process)
    assert finished.returncode == 1, finished.stderr[-3000:]
    assert "broken.jpg" in finished.stderr
    results = json.loads((tmp_path / "predictions.json").read_text())
    assert [Path(f["input"]).name for f in results["failed"]] == ["broken.jpg"]
    sizes = {Path(r["input"]).stem: r for r in results["images"]}
    assert set(sizes) == {"fundus", "larger", "grey"}
    for name, record in sizes.items():
        width, height = Image.open(inputs / Path(record["input"]).name).size
        assert record["size"] == [height, width]
        assert (tmp_path / name / "overlay.png").is_file()
        assert set(record["grades"]) == {"rg", "mer"}
        assert sum(record["grades"]["rg"]["probabilities"]) == pytest.approx(1, abs=1e-3)
        assert record["input"] in finished.stdout
        masks = sorted((tmp_path / name).glob("mask_*.png"))
        if kind == "classifier":
            assert not masks and not record["lesions"] and not record["experts"]
            continue
        assert [m.stem for m in masks] == sorted(f"mask_{lesion}" for lesion in LESIONS)
        for lesion in LESIONS:
            mask = Image.open(tmp_path / name / f"mask_{lesion}.png")
            assert mask.size == (width, height) and mask.mode == "L"
            pixels = np.asarray(mask)
            assert set(np.unique(pixels)) <= {0, 255}
            assert record["lesions"][lesion]["pixels"] == int((pixels == 255).sum())
        assert len(record["experts"]) == 7 and all(len(e["experts"]) == 1 for e in record["experts"].values())


def test_a_folder_that_is_not_a_run_exits_with_2(tiny_runs, inputs, tmp_path, capsys):
    assert predict.main(["--run", str(tmp_path / "missing"), str(inputs / "fundus.jpg")]) == 2
    assert compare_models.main(["--runs", str(tiny_runs["classifier"]), str(inputs)]) == 2
    assert "missing" in capsys.readouterr().err


def test_compare_models_reports_every_row_and_top_p_costs_less_than_dense(tiny_runs, tmp_path):
    folders = [tiny_runs[kind] for kind in ("classifier", "segmentation", "multitask")]
    finished = run_script("compare_models.py", "--runs", *folders, "--out", tmp_path, "--device", "cpu",
                          "--cost-images", 2, "--repeats", 2)
    assert finished.returncode == 0, finished.stderr[-3000:]
    text = (tmp_path / "comparison.md").read_text()
    assert text in finished.stdout
    rows = [label for label, *_ in compare_models.ACCURACY_ROWS + compare_models.COST_ROWS]
    rows += [f"experts per image: {task}" for task in ("RG", "MER", *LESIONS)]
    rows += [f"expert-camera / expert-grade MI (nats): {task}" for task in ("RG", "MER", *LESIONS)]
    rows += [label for label, *_ in compare_models.VERSUS_ROWS]
    for label in rows:
        assert f"| {label} |" in text, label
    assert "| backbone | resnet18 | resnet18 | resnet18 |" in text
    assert "| trained input size (HxW) | 64x96 | 64x96 | grading 64x96, segmentation 96x128 |" in text
    weights = [("best.pth" if (folder / "best.pth").is_file() else "model.pth") for folder in folders]
    assert f"| weights file | {' | '.join(weights)} |" in text
    report = json.loads((tmp_path / "comparison.json").read_text())
    runs = {entry["kind"]: entry for entry in report["runs"]}
    for entry in runs.values():
        assert entry["parameters"] > 0 and entry["cost"]["flops"] > 0 and entry["cost"]["latency_s"] > 0
    for kind in ("classifier", "multitask"):
        assert 0 <= runs[kind]["grading"]["joint_accuracy"] <= 1
    for kind in ("segmentation", "multitask"):
        assert set(LESIONS) <= set(runs[kind]["segmentation"])
        # scored against the original-size masks too (absent lesions are None, as NaN)
        fullres = [runs[kind]["segmentation"][lesion]["aupr_fullres"] for lesion in LESIONS]
        assert any(value is not None for value in fullres), kind
        assert all(0 <= value <= 1 for value in fullres if value is not None), (kind, fullres)
    multitask = runs["multitask"]
    assert multitask["cost"]["flops"] < multitask["dense_cost"]["flops"]
    assert all(n == 1 for n in multitask["experts_per_image"].values())
    versus = report["multitask_vs_baselines"][multitask["name"]]
    expected = multitask["parameters"] / (runs["classifier"]["parameters"] + runs["segmentation"]["parameters"])
    assert versus["parameters"]["ratio"] == pytest.approx(expected)
    assert set(multitask["routing_usage"]) == set(multitask["experts_per_image"])
    # routing's mutual information with the camera (every image) and the grade (graded images only)
    information = multitask["routing_information"]
    assert set(information) == set(multitask["experts_per_image"])
    for task, values in information.items():
        assert 0 <= values["camera_mi"] <= math.log(3) + 1e-9, (task, values)  # K <= 3 experts
        assert ("grade_mi" in values) == task.startswith("classification"), (task, values)
    rg = information["classification_rg"]
    assert f"| expert-camera / expert-grade MI (nats): RG | – | – | {rg['camera_mi']:.3f} / {rg['grade_mi']:.3f} |" in text
    assert f"| expert-camera / expert-grade MI (nats): OD | – | – | {information['segmentation_od']['camera_mi']:.3f} / – |" in text

    page = (tmp_path / "report.html").read_text()
    for heading in REPORT_SECTIONS:
        assert f"<h2>{heading}</h2>" in page, heading
    for name in (entry["name"] for entry in report["runs"]):
        assert f"<h3>{name}</h3>" in page
    figures = re.findall(r'src="([^"]*)"', page)
    assert len(figures) >= 3 + 2 + 1 + 1 + 3  # curves of 3 runs, 2 confusions, PR, routing, 3 example sets
    assert all(src.startswith("data:image/png;base64,") for src in figures), [src[:40] for src in figures]
    assert "file:" not in page and "href=" not in page
    for src in figures:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"report.html: {len(page.encode())} bytes, {len(figures)} figures")


def test_cost_size_measures_every_model_at_one_resolution(tiny_runs, synthetic_root):
    """--cost-size puts all models on equal work: the multi-task model then takes one forward for both sides,
    and convolution FLOPs grow with the pixel count (x4 from 64x96 to 128x192, up to the size-free heads)."""
    paths = [record.image_path for record in segmentation_records(synthetic_root, "test")[:1]]
    cpu = torch.device("cpu")
    for kind, folder in tiny_runs.items():
        run = open_run(folder, cpu)
        assert set(forward_passes(run, (64, 96)).values()) == {(64, 96)}
        small = compare_models.measure_cost(run, paths, cpu, repeats=1, size=(64, 96))["flops"]
        large = compare_models.measure_cost(run, paths, cpu, repeats=1, size=(128, 192))["flops"]
        assert 3.5 < large / small <= 4.0, (kind, large / small)
    run = open_run(tiny_runs["multitask"], cpu)
    assert forward_passes(run, (64, 96)) == {"all": (64, 96)}
    assert set(forward_passes(run)) == {"grading", "segmentation"}


def test_cost_size_argument_is_checked():
    assert compare_models.image_size_arg("712x1072") == (712, 1072)
    assert compare_models.image_size_arg("64,96") == (64, 96)
    for bad in ("712", "a,b", "8,8"):
        with pytest.raises(Exception, match="expected"):
            compare_models.image_size_arg(bad)
