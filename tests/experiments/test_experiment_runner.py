"""The experiment runner end to end on the tiny `smoke` grid: stop, resume, skip, results with intervals."""
import hashlib
import json
import math

import pytest

import run_experiments
from experiments.grids import SMOKE
from experiments.report import PRIMARY

pytestmark = pytest.mark.slow

SEEDS = 2


def snapshot(folder):
    """{file: (sha256, mtime_ns)} of every file under a run folder."""
    return {str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def without_latency(results):
    for entry in results["configurations"].values():
        entry["cost"].pop("latency_s")
    return results


@pytest.fixture(scope="module")
def grid_run(synthetic_root, external_trees, tmp_path_factory):
    """Runs the smoke grid the way a user whose runner was killed would: a first call stopped after two
    runs, a run killed after its last checkpoint but before model.pth, then the same command again."""
    out = tmp_path_factory.mktemp("experiments")
    argv = ["smoke", "--seeds", str(SEEDS), "--data-root", str(synthetic_root), "--out", str(out), "--device", "cpu",
            "--resamples", "200", "--cost-images", "1", "--cost-repeats", "1",
            "--external", f"ddr:{external_trees['ddr'][0]}"]
    assert run_experiments.main(argv + ["--max-runs", "2"]) == 3
    grid = out / "smoke"
    # seed by seed: both configurations with seed 0 first
    first, second = grid / "classifier" / "seed_0", grid / "mlt_2_experts" / "seed_0"
    assert (first / "model.pth").is_file() and (second / "model.pth").is_file()
    assert not (grid / "classifier" / "seed_1").exists() and not (grid / "results.json").exists()
    (second / "model.pth").unlink()  # killed between its last checkpoint and its final weights
    before = snapshot(first)
    assert run_experiments.main(argv) == 0
    return {"out": out, "grid": grid, "argv": argv, "first": first, "second": second, "before": before,
            "results": json.loads((grid / "results.json").read_text()),
            "markdown": (grid / "results.md").read_text(), "html": (grid / "report.html").read_text()}


def test_finished_runs_are_skipped_and_interrupted_ones_resumed(grid_run):
    assert snapshot(grid_run["first"]) == grid_run["before"]  # untouched: same bytes, same mtimes
    log = (grid_run["second"] / "train_log.txt").read_text()
    assert "resumed from" in log and (grid_run["second"] / "model.pth").is_file()
    for seed in range(SEEDS):
        assert (grid_run["grid"] / "mlt_2_experts" / f"seed_{seed}" / "model.pth").is_file()


def test_every_row_has_mean_spread_and_interval(grid_run):
    configurations = grid_run["results"]["configurations"]
    assert set(configurations) == set(SMOKE.configurations)
    expected = {"classifier": ["rg_kappa", "mer_kappa", "rg_accuracy", "mer_accuracy", "joint_accuracy"],
                "mlt_2_experts": PRIMARY}
    for name, metrics in expected.items():
        entry = configurations[name]
        assert entry["seeds"] == list(range(SEEDS))
        assert set(metrics) <= set(entry["metrics"])
        for metric in metrics:
            summary = entry["metrics"][metric]
            assert len(summary["seeds"]) == SEEDS and len(summary["ci"]) == 2
            if summary["mean"] is not None:  # None only where the metric is undefined (lesion absent)
                assert summary["std"] is not None and summary["ci"][0] <= summary["ci"][1]
                assert summary["resamples_used"] > 0
        assert entry["cost"]["parameters"] > 0 and entry["cost"]["flops"] > 0 and entry["cost"]["latency_s"] > 0
    assert configurations["classifier"]["cost"]["dense_flops"] is None  # nothing routed
    routed = configurations["mlt_2_experts"]["cost"]
    assert routed["dense_flops"] >= routed["flops"]  # top-p runs a subset of the experts dense runs
    assert "| top-p / dense |" in grid_run["markdown"]
    differences = configurations["mlt_2_experts"]["difference_to_reference"]
    assert set(differences) == set(expected["classifier"])  # the metrics both configurations have
    assert all(len(d["ci"]) == 2 for d in differences.values())
    assert grid_run["results"]["delta_m"]["mlt_2_experts"]["tasks"] == {
        "classification_rg": "rg_kappa", "classification_mer": "mer_kappa"}


def test_records_reproduce_each_runs_own_test_evaluation(grid_run):
    configurations = grid_run["results"]["configurations"]
    for seed in range(SEEDS):
        final = json.loads((grid_run["grid"] / "classifier" / f"seed_{seed}" / "test_metrics.json").read_text())["last"]["metrics"]
        for metric in ("rg_kappa", "mer_accuracy", "joint_accuracy"):
            assert configurations["classifier"]["metrics"][metric]["seeds"][seed] == pytest.approx(final["grading"][metric])
        final = json.loads((grid_run["grid"] / "mlt_2_experts" / f"seed_{seed}" / "test_metrics.json").read_text())["last"]["metrics"]
        mlt = configurations["mlt_2_experts"]["metrics"]
        assert mlt["rg_accuracy"]["seeds"][seed] == pytest.approx(final["grading"]["rg_accuracy"])
        for lesion in ("MA", "HE", "EX", "OD"):
            for name in ("aupr", "dice"):
                recorded, evaluated = mlt[f"{lesion}_{name}"]["seeds"][seed], final["segmentation"][lesion][name]
                if evaluated is None or (isinstance(evaluated, float) and math.isnan(evaluated)):
                    assert recorded is None
                else:
                    assert recorded == pytest.approx(evaluated, abs=1e-6)


def test_results_md_states_budget_seeds_images_procedure_and_synthetic_caveat(grid_run):
    text, results = grid_run["markdown"], grid_run["results"]
    tests = results["test_images"]
    assert "not results on real fundus photographs" in text
    assert "64x96" in text and "batch 4 per side, 2 optimizer steps" in text
    assert "Seeds: 0, 1." in text
    assert f"Test images: {tests['grading']} grading, {tests['segmentation']} segmentation." in text
    assert "200 resamples drawn with replacement" in text and "paired" in text
    for name in SMOKE.configurations:
        assert f"| {name} |" in text
    assert "| RG quadratic weighted kappa |" in text and "| OD AUPR |" in text and "delta_m" in text


def test_results_give_the_routing_of_each_multitask_configuration_on_the_test_split(grid_run):
    configurations = grid_run["results"]["configurations"]
    assert configurations["classifier"]["routing"] == {}
    routing = configurations["mlt_2_experts"]["routing"]
    assert set(routing) == {"classification_rg", "classification_mer", "segmentation_ma", "segmentation_he",
                            "segmentation_ex", "segmentation_se", "segmentation_od"}
    for seed_stats in routing.values():
        assert len(seed_stats["usage"]) == 2 and seed_stats["seeds"] == SEEDS
        assert sum(seed_stats["usage"]) == pytest.approx(seed_stats["experts_per_image"])
        assert seed_stats["busiest_share"] >= max(seed_stats["usage"]) - 1e-9  # mean of maxima >= max of means
    # the mean over seeds of what each seed's own test evaluation recorded
    recorded = [json.loads((grid_run["grid"] / "mlt_2_experts" / f"seed_{seed}" / "test_metrics.json").read_text())
                for seed in range(SEEDS)]
    per_seed = [r["last"]["metrics"]["routing"]["segmentation_ma"]["experts_per_image"] for r in recorded]
    assert routing["segmentation_ma"]["experts_per_image"] == pytest.approx(sum(per_seed) / SEEDS)
    # the worst seed's shares, which do not depend on how each seed numbered its experts
    seeds_ma = [r["last"]["metrics"]["routing"]["segmentation_ma"] for r in recorded]
    assert routing["segmentation_ma"]["busiest_share_max"] == max(s["busiest_share"] for s in seeds_ma)
    assert routing["segmentation_ma"]["least_share_min"] == min(min(s["usage"]) for s in seeds_ma)
    ma = routing["segmentation_ma"]
    assert f"{ma['busiest_share_max']:.2f} / {ma['least_share_min']:.2f} ({ma['experts_per_image']:.2f})" \
        in grid_run["markdown"]
    assert "## Routing on the test split" in grid_run["markdown"]
    assert "## Routing mutual information on the test split" in grid_run["markdown"]
    assert routing["segmentation_ma"]["information"]["camera"]["mi_per_seed"] == [
        s["camera_mi"] for s in seeds_ma]  # the synthetic tree records every image's camera


def test_report_html_holds_the_tables_and_embedded_curves_and_links_no_file(grid_run):
    page = grid_run["html"]
    assert "<table>" in page and "RG quadratic weighted kappa" in page and "not results on real fundus" in page
    for name in SMOKE.configurations:
        assert f"<h3>{name}</h3>" in page
    assert page.count('src="data:image/png;base64,') >= len(SMOKE.configurations)
    assert "file:" not in page and "href=" not in page
    assert all(source.startswith("data:image/png;base64,") for source in page.split('src="')[1:])


def test_rerun_evaluates_again_without_training_and_refuses_changed_settings(grid_run, capsys):
    before = {path: snapshot(path) for path in grid_run["grid"].glob("*/seed_*")}
    assert run_experiments.main(grid_run["argv"]) == 0
    assert {path: snapshot(path) for path in grid_run["grid"].glob("*/seed_*")} == before
    again = json.loads((grid_run["grid"] / "results.json").read_text())
    assert without_latency(again) == without_latency(grid_run["results"])  # same records, same resamples
    capsys.readouterr()
    assert run_experiments.main(grid_run["argv"] + ["--set", "train.eval_batch_size=3"]) == 2
    assert "trained with other settings" in capsys.readouterr().err


def test_every_configuration_is_scored_on_the_external_set_with_its_gap_and_the_reference(grid_run):
    external = grid_run["results"]["external"]["datasets"]
    assert [entry["format"] for entry in external] == ["ddr"] and external[0]["split"] == "test"
    entry = external[0]
    assert set(entry["configurations"]) == set(SMOKE.configurations)
    assert "OD" in entry["absent"] and "mer" in entry["absent"]  # DDR has no optic disc masks and no MER
    for name, scores in entry["configurations"].items():
        assert "rg_kappa" in scores["metrics"] and "rg_kappa" in scores["gap"]
        in_domain = grid_run["results"]["configurations"][name]["metrics"]["rg_kappa"]["mean"]
        assert scores["gap"]["rg_kappa"]["difference"] == pytest.approx(scores["metrics"]["rg_kappa"]["mean"] - in_domain)
        assert ("gap_difference_to_reference" in scores) == (name != SMOKE.reference)
    multitask = entry["configurations"]["mlt_2_experts"]
    assert "MA_aupr" in multitask["metrics"] and "OD_aupr" not in multitask["metrics"]
    assert "MA_aupr" not in entry["configurations"]["classifier"]["metrics"]  # the classifier segments nothing
    text = grid_run["markdown"]
    assert "## Generalization: external datasets" in text and "### DDR" in text and "vs ref" in text
