"""Generalization metrics: intervals and gaps checked against a direct numpy bootstrap, the mean over
lesions compared on the external set's lesions, absent tasks, and generalization.md."""
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score

from codebase.data.formats.base import LabelledSet
from codebase.evaluation.metrics import SegmentationMeter
from experiments.dataset_records import scored_tasks
from experiments.generalization import evaluate_datasets, markdown
from experiments.records import image_record, pack_segmentation_records

RESAMPLES, SEED = 200, 7


def labelled(fmt, test_split=None, grades=("rg",), lesions=(), absent=None, left_out=None):
    return LabelledSet(fmt, Path(f"/data/{fmt}"), [], grades, lesions, absent or {}, Counter(left_out or {}),
                       test_split)


def grading(true, predicted, key="rg"):
    return {"names": np.array([f"i{n}" for n in range(len(true))]), f"{key}_true": np.asarray(true),
            f"{key}_predicted": np.asarray(predicted)}


def records(grading_records=None, segmentation_records=None, absent=None):
    images = {"grading": len(grading_records["names"]) if grading_records else 0,
              "segmentation": len(segmentation_records["names"]) if segmentation_records else 0}
    return {"grading": grading_records, "segmentation": segmentation_records, "absent": absent or {},
            "images": images, "plan": None}


def direct_bootstrap(true, predicted, seed, statistic):
    """The statistic on each resample of images, drawn directly with numpy."""
    indices = np.random.default_rng(seed).integers(0, len(true), size=(RESAMPLES, len(true)))
    return np.array([statistic(true[row], predicted[row]) for row in indices])


def test_the_gap_and_its_interval_equal_a_direct_numpy_bootstrap():
    generator = np.random.default_rng(0)
    true_in, true_out = generator.integers(0, 5, 40), generator.integers(0, 5, 25)
    predicted_in = np.where(generator.random(40) < 0.7, true_in, generator.integers(0, 5, 40))
    predicted_out = np.where(generator.random(25) < 0.4, true_out, generator.integers(0, 5, 25))
    entries = evaluate_datasets([(labelled("idrid", "test"), records(grading(true_in, predicted_in))),
                                 (labelled("aptos"), records(grading(true_out, predicted_out)))],
                                resamples=RESAMPLES, seed=SEED)
    accuracy = lambda t, p: np.mean(t == p)  # noqa: E731
    kappa = lambda t, p: cohen_kappa_score(t, p, weights="quadratic", labels=range(5))  # noqa: E731
    for metric, statistic in (("rg_accuracy", accuracy), ("rg_kappa", kappa)):
        inside = direct_bootstrap(true_in, predicted_in, [SEED, 0, 0], statistic)
        outside = direct_bootstrap(true_out, predicted_out, [SEED, 1, 0], statistic)
        gap = entries[1]["gap"][metric]
        assert gap["difference"] == pytest.approx(statistic(true_out, predicted_out) - statistic(true_in, predicted_in))
        assert gap["ci"] == pytest.approx(list(np.percentile(outside - inside, [2.5, 97.5])), abs=1e-12)
        assert entries[0]["metrics"][metric]["ci"] == pytest.approx(list(np.percentile(inside, [2.5, 97.5])))
        assert entries[1]["metrics"][metric]["value"] == pytest.approx(statistic(true_out, predicted_out))
    assert "gap" not in entries[0] and entries[0]["role"] == "in-domain" and entries[1]["role"] == "external"


def lesion_records(lesions, seed, images=6):
    """Per-image segmentation records of random probabilities against random masks."""
    generator = torch.Generator().manual_seed(seed)
    meter = SegmentationMeter(lesions, bins=2**16)
    counts, sparse = [], []
    for _ in range(images):
        masks = (torch.rand(1, len(lesions), 8, 8, generator=generator) < 0.2).to(torch.uint8)
        weight = torch.linspace(0.05, 0.5, len(lesions)).view(1, -1, 1, 1)  # lesions told apart unequally well
        probs = weight * masks + (1 - weight) * torch.rand(1, len(lesions), 8, 8, generator=generator)
        count, histogram = image_record(meter, probs, masks)
        counts.append(count)
        sparse.append(histogram)
    return pack_segmentation_records([f"s{n}" for n in range(images)], list(lesions), counts, sparse)


def test_a_mean_over_lesions_is_compared_over_the_external_sets_lesions():
    inside = lesion_records(("MA", "HE", "EX", "SE", "OD"), 1)
    outside = lesion_records(("MA", "HE", "EX", "SE"), 2)
    entries = evaluate_datasets([(labelled("idrid", "test", lesions=("MA", "HE", "EX", "SE", "OD")),
                                  records(segmentation_records=inside)),
                                 (labelled("ddr", "test", lesions=("MA", "HE", "EX", "SE"), absent={"OD": "no OD"}),
                                  records(segmentation_records=outside, absent={"OD": "no OD"}))],
                                resamples=50, seed=0)
    metrics_in, metrics_out = entries[0]["metrics"], entries[1]["metrics"]
    four = np.mean([metrics_in[f"{lesion}_aupr"]["value"] for lesion in ("MA", "HE", "EX", "SE")])
    assert entries[1]["gap"]["mean_aupr"]["difference"] == pytest.approx(metrics_out["mean_aupr"]["value"] - four)
    assert metrics_in["mean_aupr"]["value"] != pytest.approx(four)  # the in-domain row's own mean has OD
    assert "OD_aupr" not in metrics_out and "OD_aupr" not in entries[1]["gap"]


def test_markdown_puts_in_domain_first_and_says_absent_never_zero():
    inside = {**grading(np.array([0, 2, 1, 2]), np.array([0, 2, 2, 2])),
              **grading(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), key="dme")}
    entries = evaluate_datasets([(labelled("idrid", "test", grades=("rg", "mer", "dme")), records(inside)),
                                 (labelled("messidor2", grades=("rg", "dme"), left_out={("all", "ungradable"): 2}),
                                  records(grading(np.array([1, 0, 1]), np.array([1, 0, 0]), key="dme"),
                                          absent={"mer": "binary DME only", "rg": "test"}))],
                                resamples=20, seed=0)
    text = markdown({"run": "saved/x", "kind": "classifier", "weights": "best.pth", "resamples": 20, "level": 0.95,
                     "synthetic": True, "datasets": entries})
    rows = [line for line in text.splitlines() if line.startswith("| IDRiD") or line.startswith("| Messidor")]
    assert rows[0].startswith("| IDRiD (in-domain)") and rows[1].startswith("| Messidor-2")
    grading_row = [line for line in text.split("## Grading")[1].splitlines() if line.startswith("| Messidor")][0]
    assert "absent" in grading_row and "Δ" in grading_row and "2 ungradable" in text and "Synthetic data" in text


def test_scored_tasks_name_what_the_run_cannot_predict():
    task = lambda key, side: SimpleNamespace(key=key, side=side)  # noqa: E731
    classifier = SimpleNamespace(kind="classifier",
                                 tasks=lambda side: [task("rg", side), task("mer", side)] if side == "grading" else [])
    ddr = labelled("ddr", "test", lesions=("MA", "HE", "EX", "SE"),
                   absent={"mer": "DDR has no macular edema label", "dme": "DDR has no macular edema label",
                           "OD": "no optic disc masks"})
    grades, lesions, absent = scored_tasks(classifier, ddr)
    assert grades == ["rg"] and lesions == []
    assert "does not segment" in absent["MA"] and absent["OD"] == "no optic disc masks"
    assert absent["mer"] == "DDR has no macular edema label"


def test_the_mean_primary_gap_takes_the_in_domain_mean_over_the_external_sets_tasks():
    from experiments.generalization import gap_arrays
    in_domain = {"rg_kappa": np.array([0.6, 0.5]), "mer_kappa": np.array([0.4, 0.3]),
                 "HE_aupr": np.array([0.8, np.nan]), "OD_aupr": np.array([0.9, 0.9])}
    in_domain["mean_primary"] = np.array([0.675, 0.567])  # over four tasks: not what a set without OD compares
    external = {"rg_kappa": np.array([0.5, 0.4]), "mer_kappa": np.array([0.2, 0.2]), "HE_aupr": np.array([0.6, 0.7]),
                "mean_primary": np.array([0.4, 0.5])}  # a set with no OD masks
    gap = gap_arrays(external, in_domain, ["HE"])
    np.testing.assert_allclose(gap["mean_primary"], [0.4 - 0.6, 0.5 - 0.4])  # in domain: (rg, mer, HE), HE undefined
    assert "mean_primary" not in gap_arrays(external, {"rg_kappa": in_domain["rg_kappa"]}, ["HE"])  # tasks missing
