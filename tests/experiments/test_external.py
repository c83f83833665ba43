"""A grid's external evaluation: each configuration's gap, and its gap against the reference's, checked
against a direct numpy bootstrap; the synthetic external trees a demo grid writes when absent."""
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from codebase.data.formats import FORMATS
from codebase.data.formats.base import LabelledSet
from codebase.data.synthetic_formats import ensure_tree
from experiments import external
from experiments.analysis import run_metrics
from experiments.bootstrap import resample_indices, resample_weights, with_full_set

RESAMPLES, SEED, IN_DOMAIN, OUTSIDE = 300, 5, 40, 30


def noisy(true, right, generator):
    return np.where(generator.random(len(true)) < right, true, generator.integers(0, 5, len(true)))


def grading(true, predicted):
    return {"names": np.array([f"i{n}" for n in range(len(true))]), "rg_true": true, "rg_predicted": predicted}


def test_gaps_and_their_difference_from_the_reference_equal_a_direct_numpy_bootstrap(monkeypatch):
    generator = np.random.default_rng(1)
    true_in, true_out = generator.integers(0, 5, IN_DOMAIN), generator.integers(0, 5, OUTSIDE)
    # configuration "a" (the reference) loses more out of domain than "b"; two seeds each
    skill = {"a": ((0.8, 0.3), (0.7, 0.35)), "b": ((0.75, 0.6), (0.7, 0.55))}
    predicted = {(name, seed): (noisy(true_in, inside, generator), noisy(true_out, outside, generator))
                 for name, seeds in skill.items() for seed, (inside, outside) in enumerate(seeds)}
    planned = [SimpleNamespace(name=f"{name}/seed_{seed}", configuration=name, seed=seed, folder=Path(f"/runs/{name}/{seed}"))
               for name, seed in predicted]
    records_of = {str(run.folder): {"grading": grading(true_out, predicted[run.configuration, run.seed][1]),
                                    "segmentation": None, "absent": {}, "images": {}, "plan": None} for run in planned}
    monkeypatch.setattr(external, "external_records", lambda folder, labelled, device, cache: records_of[str(folder)])
    in_weights = with_full_set(resample_weights(resample_indices(IN_DOMAIN, RESAMPLES, SEED), IN_DOMAIN))
    in_domain = {name: {metric: np.stack([run_metrics({"grading": grading(true_in, predicted[name, seed][0])},
                                                      in_weights, None)[metric] for seed in range(2)])
                        for metric in ("rg_accuracy", "rg_kappa")} for name in skill}
    labelled = LabelledSet("aptos", Path("/data/aptos"), [], ("rg",), (), {"mer": "no MER label"}, Counter(), None)
    result = external.analyse_external(SimpleNamespace(reference="a"), planned, in_domain, [labelled], "cpu",
                                       RESAMPLES, SEED, 0.95, "/records", log=lambda *_: None)

    inside_rows = np.random.default_rng(SEED).integers(0, IN_DOMAIN, size=(RESAMPLES, IN_DOMAIN))
    outside_rows = np.random.default_rng([SEED, 100, 0]).integers(0, OUTSIDE, size=(RESAMPLES, OUTSIDE))

    def direct_gap(name):  # per resample: mean over seeds outside minus mean over seeds in domain
        accuracy = lambda t, p, rows: np.array([np.mean(t[r] == p[r]) for r in rows])  # noqa: E731
        outside = np.mean([accuracy(true_out, predicted[name, s][1], outside_rows) for s in range(2)], axis=0)
        inside = np.mean([accuracy(true_in, predicted[name, s][0], inside_rows) for s in range(2)], axis=0)
        return outside - inside

    entry = result["datasets"][0]
    assert entry["name"] == FORMATS["aptos"].TITLE and entry["split"] == "all" and entry["absent"] == {"mer": "no MER label"}
    for name in skill:
        gap = entry["configurations"][name]["gap"]["rg_accuracy"]
        assert gap["ci"] == pytest.approx(list(np.percentile(direct_gap(name), [2.5, 97.5])), abs=1e-12)
    versus = entry["configurations"]["b"]["gap_difference_to_reference"]["rg_accuracy"]
    assert versus["ci"] == pytest.approx(list(np.percentile(direct_gap("b") - direct_gap("a"), [2.5, 97.5])), abs=1e-12)
    assert versus["difference"] > 0 and "gap_difference_to_reference" not in entry["configurations"]["a"]
    text = "\n".join(external.markdown_lines(result, "a", lambda metric: metric))
    assert "### APTOS" in text and "vs ref" in text and "| rg_kappa |" in text


@pytest.mark.slow
def test_a_missing_synthetic_external_tree_is_written_once_and_then_read(tmp_path):
    held_out = ensure_tree("idrid", tmp_path / "heldout", count=5)
    assert FORMATS["idrid"].detect(held_out)
    cameras = {image["camera"] for image in json.loads((held_out / "synthetic.json").read_text())["images"].values()}
    assert cameras == {"eyepacs"}  # the camera the default tree leaves out
    aptos = ensure_tree("aptos", tmp_path / "aptos", count=3)
    stamp = (aptos / "train.csv").stat().st_mtime_ns
    assert ensure_tree("aptos", tmp_path / "aptos", count=3) == aptos and (aptos / "train.csv").stat().st_mtime_ns == stamp
    assert len(FORMATS["aptos"].read(aptos).records) == 3
