"""evaluate.py on a tiny run of each kind against the synthetic IDRiD test split and every external
format's synthetic tree, run as a user runs it (the multi-task run as a subprocess, the others through
evaluate.main); and its one-line errors for bad paths and files."""
import json
import shutil
import subprocess
import sys

import pytest
from tiny_training import ENV, REPO

import compare_models
import evaluate
from codebase.data.idrid import LESIONS

pytestmark = pytest.mark.slow  # trains models or runs scripts in subprocesses

EXTERNAL = ("aptos", "eyepacs", "messidor2", "ddr", "fgadr")
GRADED = {"idrid": ("rg", "mer", "dme"), "aptos": ("rg",), "eyepacs": ("rg",), "messidor2": ("rg", "dme"),
          "ddr": ("rg",), "fgadr": ("rg",)}
SEGMENTED = {"idrid": LESIONS, "ddr": ("MA", "HE", "EX", "SE"), "fgadr": ("MA", "HE", "EX", "SE")}


def evaluate_script(*args, capsys=None):
    """evaluate.py as a user runs it (a subprocess), or with ``capsys`` in-process through its ``main``
    (the same command line without a new interpreter's seconds of imports)."""
    if capsys is None:
        return subprocess.run([sys.executable, str(REPO / "evaluate.py"), *map(str, args)], capture_output=True,
                              text=True, env=ENV, cwd=REPO, timeout=600)
    capsys.readouterr()
    code = evaluate.main([str(arg) for arg in args])
    printed = capsys.readouterr()
    return subprocess.CompletedProcess("evaluate.py", code, printed.out, printed.err)


def trained_test_metrics(run):
    """The run's own test metrics of its best weights: (grading metrics, lesion metrics)."""
    metrics = json.loads((run / "test_metrics.json").read_text())["best"]["metrics"]
    grading = metrics if "rg_accuracy" in metrics else metrics.get("grading", {})  # the classifier's are flat
    return grading, metrics.get("segmentation", {})


@pytest.mark.parametrize("kind", ["classifier", "segmentation", "multitask"])
def test_evaluate_scores_every_dataset_the_run_and_labels_allow(kind, tiny_runs, external_trees, tmp_path, capsys):
    data = [f"--data={fmt}:{external_trees[fmt][0]}" for fmt in EXTERNAL]
    in_process = None if kind == "multitask" else capsys  # the multi-task run as a real subprocess
    finished = evaluate_script("--run", tiny_runs[kind], *data, "--out", tmp_path, "--device", "cpu",
                               "--resamples", 50, capsys=in_process)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads((tmp_path / "metrics.json").read_text())
    entries = {entry["format"]: entry for entry in report["datasets"]}
    assert [entry["format"] for entry in report["datasets"]] == ["idrid", *EXTERNAL]
    assert report["kind"] == kind and report["synthetic"] is True
    grades = kind in ("classifier", "multitask")
    lesions = kind in ("segmentation", "multitask")
    for fmt, entry in entries.items():
        metrics = entry["metrics"]
        for key in ("rg", "mer", "dme"):
            scored = grades and key in GRADED[fmt]
            assert (f"{key}_accuracy" in metrics) == scored, (fmt, key)
            assert scored or key in entry["absent"], (fmt, key)
        for lesion in LESIONS:
            scored = lesions and lesion in SEGMENTED.get(fmt, ())
            assert (f"{lesion}_aupr" in metrics) == scored, (fmt, lesion)
            assert scored or lesion in entry["absent"], (fmt, lesion)
        for value in metrics.values():  # every metric has its interval
            assert len(value["ci"]) == 2 and (value["ci"][0] is None or value["ci"][0] <= value["ci"][1])
        if fmt != "idrid":
            assert set(entry["gap"]) <= set(metrics) and bool(entry["gap"]) == bool(metrics)
            for metric, gap in entry["gap"].items():
                if not metric.startswith("mean_") and gap["difference"] is not None:
                    in_domain = entries["idrid"]["metrics"][metric]["value"]
                    assert gap["difference"] == pytest.approx(metrics[metric]["value"] - in_domain)
    assert entries["ddr"]["left_out"] == {"ungradable (grade 5)": 1}
    assert entries["messidor2"]["left_out"] == {"ungradable (adjudicated_gradable 0)": 2}
    if not grades:
        assert "RG head" in entries["aptos"]["absent"]["rg"]
    if not lesions:
        assert "does not segment" in entries["fgadr"]["absent"]["MA"]
    else:  # FGADR's 256x256 images are at least twice the trained size: sliding windows, as predict.py
        assert entries["fgadr"]["segmentation_plan"]["sliding"] == entries["fgadr"]["images"]["segmentation"] == 3
        plan = entries["idrid"]["segmentation_plan"]  # 192x128: twice the segmentation run's 96x64, not more
        assert (plan["whole"], plan["sliding"]) == ((0, 2) if kind == "segmentation" else (2, 0))
    text = (tmp_path / "generalization.md").read_text()
    assert text in finished.stdout
    assert "IDRiD (in-domain)" in text and text.index("IDRiD (in-domain)") < text.index("APTOS 2019")
    assert "Synthetic data" in text and "absent" in text and "Δ" in text


@pytest.mark.parametrize("kind", ["classifier", "segmentation", "multitask"])
def test_in_domain_metrics_equal_the_runs_own_test_metrics(kind, tiny_runs, external_trees, tmp_path):
    """With --sliding off every image is predicted at the trained size, as the run's test evaluation was."""
    assert evaluate.main(["--run", str(tiny_runs[kind]), "--data", f"ddr:{external_trees['ddr'][0]}", "--device",
                          "cpu", "--sliding", "off", "--resamples", "10", "--out", str(tmp_path)]) == 0
    in_domain = json.loads((tmp_path / "metrics.json").read_text())["datasets"][0]["metrics"]
    grading, segmentation = trained_test_metrics(tiny_runs[kind])
    for key in (("rg_accuracy", "rg_kappa", "mer_accuracy", "mer_kappa", "joint_accuracy") if grading else ()):
        assert in_domain[key]["value"] == pytest.approx(grading[key], abs=1e-9), key
    for lesion in (LESIONS if segmentation else ()):
        for metric in ("aupr", "dice"):
            expected, value = segmentation[lesion][metric], in_domain[f"{lesion}_{metric}"]["value"]
            assert value is None if expected != expected else value == pytest.approx(expected, abs=1e-6)
    both = bool(grading) and bool(segmentation)  # the multi-task model also gets the mean of its tasks' scores
    assert len(in_domain) == 7 * bool(grading) + (2 * len(LESIONS) + 2) * bool(segmentation) + both  # DME, means
    if both:
        scores = [in_domain[m]["value"] for m in ("rg_kappa", "mer_kappa") + tuple(f"{lesion}_aupr" for lesion in LESIONS)]
        defined = [v for v in scores if v is not None]
        assert in_domain["mean_primary"]["value"] == pytest.approx(sum(defined) / len(defined), abs=1e-9)


def test_bad_paths_and_unreadable_files_get_one_line_errors(tiny_runs, external_trees, tmp_path, capsys,
                                                            monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")  # stderr holds the error line alone, without a cleared bar
    run = str(tiny_runs["classifier"])
    assert evaluate.main(["--run", run, "--data", f"ddr:{tmp_path / 'nowhere'}", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and str(tmp_path / "nowhere") in error and error.count("\n") == 1
    aptos = shutil.copytree(external_trees["aptos"][0], tmp_path / "aptos")
    broken = sorted((aptos / "train_images").iterdir())[0]
    broken.write_bytes(b"\x89PNG not really")
    assert evaluate.main(["--run", run, "--data", f"auto:{aptos}", "--device", "cpu", "--out",
                          str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and str(broken) in error and error.count("\n") == 1
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert evaluate.main(["--run", str(tmp_path / "no_run"), "--data", f"aptos:{aptos}", "--device", "cpu"]) == 2
    assert "no_run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        evaluate.main(["--run", run, "--data", f"kaggle:{aptos}"])
    assert caught.value.code == 2 and "FORMAT:PATH" in capsys.readouterr().err


def test_compare_models_external_adds_evaluate_pys_generalization_for_every_run(tiny_runs, external_trees,
                                                                               synthetic_root, tmp_path):
    folders = [str(tiny_runs[kind]) for kind in ("classifier", "segmentation", "multitask")]
    external = [f"ddr:{external_trees['ddr'][0]}", f"messidor2:{external_trees['messidor2'][0]}"]
    assert compare_models.main(["--runs", *folders, "--data-root", str(synthetic_root), "--device", "cpu",
                                "--cost-images", "1", "--repeats", "1", "--resamples", "30", "--out",
                                str(tmp_path / "compare"), *[f"--external={data}" for data in external]]) == 0
    report = json.loads((tmp_path / "compare" / "comparison.json").read_text())
    assert evaluate.main(["--run", folders[2], "--in-domain", f"idrid:{synthetic_root}", "--device", "cpu",
                          "--resamples", "30", "--out", str(tmp_path / "evaluate"),
                          *[f"--data={data}" for data in external]]) == 0
    evaluated = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())["datasets"]
    runs = {entry["kind"]: entry for entry in report["runs"]}
    assert runs["multitask"]["generalization"] == evaluated
    assert [d["format"] for d in runs["classifier"]["generalization"]] == ["idrid", "ddr", "messidor2"]
    text = (tmp_path / "compare" / "comparison.md").read_text()
    assert "## Generalization" in text and "| DDR: HE AUPR | absent |" in text and "| Messidor-2: DME kappa |" in text
    assert "Generalization" in (tmp_path / "compare" / "report.html").read_text()
