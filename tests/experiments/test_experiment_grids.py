"""Grids: validation against the train scripts' CONFIG keys, and the budget as each script's overrides."""
import dataclasses
import json

import pytest

import run_experiments
from codebase.config import get_value, parse_cli, parse_value
from codebase.runtime.lock import FolderLock, holder
from experiments import runner
from experiments.budget import (
    GridError,
    budget_overrides,
    check_grid,
    cli_text,
    config_keys,
    steps_per_epoch,
)
from experiments.grids import (
    CLASSIFIER,
    GRIDS,
    MOE,
    MULTITASK,
    SEGMENTATION,
    Budget,
    Configuration,
)


def test_shipped_grids_are_valid():
    for name, grid in GRIDS.items():
        check_grid(name, grid)
    assert MOE.reference == "mlt_3_experts_top_p"
    no_balance = MOE.configurations["mlt_3_experts_top_p_no_balance"].overrides
    assert "loss.gate_balanced_assignment=0" in no_balance and "routing.balance_rate=0" in no_balance
    dense = MOE.configurations["mlt_3_experts_dense"].overrides
    assert "routing.warmup_fraction=1.0" in dense and "routing.top_p=1.0" in dense


def test_config_keys_are_those_of_the_imported_script():
    keys = config_keys(MULTITASK)
    assert {"loss.gate_balanced_assignment", "routing.top_p", "model.num_experts", "seed", "run.save_dir"} <= keys
    # Sections a script builds by a call (the weightings' settings, the patch settings) count too.
    assert {"loss.cagrad_c", "loss.task_weights", "data.patches.enabled", "data.patches.overlap"} <= keys
    assert "data.image_size" in config_keys(CLASSIFIER) and "model.output_stride" in config_keys(SEGMENTATION)


def test_unknown_key_fails_with_the_configuration_named():
    grid = dataclasses.replace(MOE, configurations={
        **MOE.configurations, "no_balance": Configuration(MULTITASK, ("loss.routing_balance=0",))})
    with pytest.raises(GridError, match=r"'no_balance'.*train_mlt_model.py CONFIG has no key 'loss.routing_balance'"):
        check_grid("moe", grid)


def test_budget_keys_and_runner_keys_cannot_be_overridden():
    with pytest.raises(GridError, match="train.epochs.*budget"):
        check_grid("moe", MOE, ["train.epochs=3"])
    with pytest.raises(GridError, match="'seed'"):
        check_grid("moe", dataclasses.replace(MOE, overrides=("seed=4",)))
    with pytest.raises(GridError, match="reference 'x'"):
        check_grid("moe", dataclasses.replace(MOE, reference="x"))


def test_budget_gives_every_script_the_same_steps_and_images():
    budget = MOE.budget  # batch 8, 96 steps; the demo tree leaves 128 grading, 24 segmentation training images
    classifier = budget_overrides(CLASSIFIER, budget, 128, 24)
    segmentation = budget_overrides(SEGMENTATION, budget, 128, 24)
    multitask = budget_overrides(MULTITASK, budget, 128, 24)
    assert classifier["train.epochs"] * (128 // 8) == 96
    assert segmentation["train.epochs"] * (24 // 8) == 96
    assert multitask["train.epochs"] * multitask["train.iterations"] == 96
    assert classifier["data.image_size"] == segmentation["data.image_size"] == segmentation["data.crop_size"] \
        == multitask["data.grading_size"] == multitask["data.segmentation_size"] == [128, 192]
    assert multitask["data.crop_size"] is None
    assert {c["train.batch_size"] for c in (classifier, segmentation, multitask)} == {8}
    assert {c["data.validation"] for c in (classifier, segmentation, multitask)} == {0.2}


def test_budget_that_cannot_be_equal_is_refused():
    with pytest.raises(GridError, match="does not divide the 30 segmentation.*1, 2, 3, 5, 6, 10, 15, 30"):
        steps_per_epoch(SEGMENTATION, 8, 160, 30)
    with pytest.raises(GridError, match="not a whole number of train_classifier.py epochs.*multiple of 16"):
        budget_overrides(CLASSIFIER, Budget((128, 192), 10, 250), 160, 30)
    with pytest.raises(GridError, match="more than the 10 grading"):
        steps_per_epoch(MULTITASK, 12, 10, 4)


@pytest.mark.parametrize("value, default", [([64, 96], [712, 1072]), (None, None), (3, 1), (0.5, 0.1),
                                            (False, True), ("resnet18", "resnet50")])
def test_cli_text_parses_back(value, default):
    assert parse_value("key", cli_text(value), default) == value


def test_command_line_errors_exit_2(synthetic_root, tmp_path, capsys):
    assert run_experiments.main(["nope", "--data-root", str(synthetic_root)]) == 2
    assert "no grid 'nope'" in capsys.readouterr().err
    assert run_experiments.main(["smoke", "--data-root", str(synthetic_root), "--out", str(tmp_path),
                                 "--set", "model.nope=1"]) == 2
    assert "has no key 'model.nope'" in capsys.readouterr().err
    assert run_experiments.main(["smoke", "--data-root", str(tmp_path / "missing")]) == 2
    assert "no IDRiD tree" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_each_moe_command_resolves_to_the_budget_in_its_script(tmp_path):
    import train_classifier
    import train_mlt_model
    import train_segmentation
    from experiments.runner import command, plan_runs

    scripts = {CLASSIFIER: train_classifier, SEGMENTATION: train_segmentation, MULTITASK: train_mlt_model}
    planned = plan_runs("moe", MOE, [0, 2], tmp_path, tmp_path / "data", (128, 24), ["train.eval_batch_size=4"])
    assert len(planned) == 2 * len(MOE.configurations)
    for run in planned:
        argv = command(run, tmp_path / "data", demo=True)[2:]  # after python and the script
        script = scripts[run.script]
        config = parse_cli(script.CONFIG, argv, script.DEMO, validate=script.validate)
        images = 128 if run.script != SEGMENTATION else 24
        steps = config["train"]["epochs"] * config["train"].get("iterations", images // config["train"]["batch_size"])
        assert steps == 96 and config["train"]["batch_size"] == 8, run.name
        assert config["seed"] == run.seed and config["run"]["name"] == f"seed_{run.seed}"
        assert config["run"]["save_dir"] == str(tmp_path / "moe" / run.configuration)
        assert config["train"]["eval_batch_size"] == 4
        for assignment in MOE.configurations[run.configuration].overrides:
            key, _, text = assignment.partition("=")
            assert get_value(config, key) == parse_value(key, text, get_value(script.CONFIG, key))


def test_weighting_grid_runs_every_registered_method_against_fixed():
    from codebase.training.weighting import WEIGHTINGS, installed_weightings
    grid = GRIDS["weighting"]
    assert grid.reference == "fixed"
    assert {name: c.overrides for name, c in grid.configurations.items()} == {
        method: (f"loss.weighting={method}",) for method in installed_weightings()}
    assert set(WEIGHTINGS) - set(grid.configurations) <= {"nash_mtl"}  # its cvxpy is optional
    assert all(c.script == MULTITASK for c in grid.configurations.values())
    overrides = budget_overrides(MULTITASK, grid.budget, 128, 24)  # the synthetic demo tree
    assert overrides["train.epochs"] * overrides["train.iterations"] == grid.budget.optimizer_steps


def test_configs_selects_part_of_a_grid_and_keeps_the_reference():
    grid = GRIDS["weighting"]
    chosen = run_experiments.select_configurations("weighting", grid, "pcgrad, famo")
    assert list(chosen.configurations) == ["fixed", "famo", "pcgrad"]  # grid order, reference included
    assert chosen.reference == "fixed" and chosen.budget == grid.budget
    assert run_experiments.select_configurations("weighting", grid, None) is grid
    with pytest.raises(GridError, match=r"no configuration nash; it has fixed, aligned_mtl, cagrad, dualproj"):
        run_experiments.select_configurations("weighting", grid, "pcgrad,nash")


def test_a_run_another_process_is_training_is_left_to_it(tmp_path, monkeypatch):
    busy, free = tmp_path / "busy" / "seed_0", tmp_path / "free" / "seed_0"
    busy.mkdir(parents=True)
    assert holder(busy) is None  # no lock file
    lock = FolderLock(busy)
    lock.acquire()  # as the other runner's train script holds it
    launched = []

    class Finished:
        def __init__(self, arguments, cwd):
            launched.append(arguments)

        def wait(self):
            return 0

    monkeypatch.setattr(runner.subprocess, "Popen", Finished)
    planned = [runner.PlannedRun("busy", 0, MULTITASK, busy, []), runner.PlannedRun("free", 0, MULTITASK, free, [])]
    lines = []
    try:
        assert "process" in holder(busy)
        unfinished = runner.train_all(planned, tmp_path, demo=True, log=lines.append)
    finally:
        lock.release()
    assert len(launched) == 1 and str(free.name) in " ".join(launched[0])  # only the free run was started
    assert any("busy/seed_0: being trained by process" in line for line in lines), lines
    assert unfinished == 2  # neither has model.pth: a later run of the command picks the busy one up
    assert holder(busy) is None  # released


def test_an_upcycled_configuration_starts_from_its_sources_run_of_the_same_seed(tmp_path):
    import train_mlt_model
    from experiments.runner import command, plan_runs

    grid = GRIDS["experts"]
    chosen = run_experiments.select_configurations("experts", grid, "mlt_upcycled")
    assert list(chosen.configurations) == ["mlt_1_expert", "mlt_1_expert_96_steps", "mlt_upcycled"]  # source kept
    planned = plan_runs("experts", chosen, [0, 1], tmp_path, tmp_path / "data", (128, 24))
    names = [run.name for run in planned]
    for seed in (0, 1):
        upcycled = planned[names.index(f"mlt_upcycled/seed_{seed}")]
        source = tmp_path / "experts" / "mlt_1_expert_96_steps" / f"seed_{seed}"
        assert upcycled.source == source and names.index(f"mlt_1_expert_96_steps/seed_{seed}") < names.index(
            upcycled.name)  # planned, so trained, before the run that starts from it
        config = parse_cli(train_mlt_model.CONFIG, command(upcycled, tmp_path / "data", demo=True)[2:],
                           train_mlt_model.DEMO)  # not validated: that reads the source run, untrained here
        assert config["model"]["init_from"] == str(source) and config["model"]["num_experts"] == 3
        assert config["train"]["epochs"] * config["train"]["iterations"] == 96  # + the source's 96 = the budget
    reference = planned[names.index("mlt_1_expert/seed_0")]
    assert reference.source is None and not any(s.startswith("model.init_from") for s in reference.settings)


@pytest.mark.parametrize("change, message", [
    ({"upcycle_from": "mlt_later"}, r"upcycle_from='mlt_later' is not a configuration listed before it"),
    ({"optimizer_steps": 64}, r"its 64 steps and 'source''s add up to 160; the budget's 192"),
    ({"optimizer_steps": 400}, r"optimizer_steps=400; expected 1 to the budget's 192"),
])
def test_upcycling_that_cannot_compare_at_equal_steps_is_refused_by_name(change, message):
    upcycled = dataclasses.replace(Configuration(MULTITASK, upcycle_from="source", optimizer_steps=96), **change)
    grid = dataclasses.replace(GRIDS["experts"], configurations={
        "mlt_1_expert": Configuration(MULTITASK), "source": Configuration(MULTITASK, optimizer_steps=96),
        "upcycled": upcycled, "mlt_later": Configuration(MULTITASK)})
    with pytest.raises(GridError, match=rf"configuration 'upcycled': {message}"):
        check_grid("experts", grid)
    classifier_source = dataclasses.replace(grid, configurations={
        **grid.configurations, "source": Configuration(CLASSIFIER), "upcycled": Configuration(
            MULTITASK, upcycle_from="source", optimizer_steps=96)})
    with pytest.raises(GridError, match=r"upcycling needs two train_mlt_model.py configurations"):
        check_grid("experts", classifier_source)


def test_an_upcycled_run_waits_while_its_source_is_unfinished(tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr(runner.subprocess, "Popen", lambda arguments, cwd: launched.append(arguments))
    source, upcycled = tmp_path / "source" / "seed_0", tmp_path / "upcycled" / "seed_0"
    planned = [runner.PlannedRun("upcycled", 0, MULTITASK, upcycled, [f"model.init_from={source}"], source)]
    lines = []
    assert runner.train_all(planned, tmp_path, demo=True, log=lines.append) == 1
    assert not launched and any(f"waits for {source} to finish" in line for line in lines), lines


def finished_run(folder, config):
    """A run folder that counts as finished (runner.is_finished) with ``config`` as its config.json."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "history.json").write_text(json.dumps([{"epoch": config["train"]["epochs"]}]))
    (folder / "model.pth").write_bytes(b"")


def test_a_finished_run_its_script_would_now_train_differently_is_refused_by_name(tmp_path, monkeypatch):
    """A default of the script changed since a finished run was trained (the expert layout, say): the grid
    names the setting instead of mixing the stale run into today's comparison; a run from before a
    setting existed, trained as its earlier behaviour (upgrade_config), still counts."""
    import train_mlt_model

    monkeypatch.setattr(runner.subprocess, "Popen", lambda *args, **kwargs: pytest.fail("nothing is trained"))
    (tmp_path / "data").mkdir()
    run = runner.PlannedRun("mlt", 0, MULTITASK, tmp_path / "grid" / "mlt" / "seed_0", ["train.epochs=2"])
    today = parse_cli(train_mlt_model.CONFIG, runner.command(run, tmp_path / "data", demo=True)[2:],
                      train_mlt_model.DEMO)
    older = json.loads(json.dumps(today))
    for key in ("gate_input", "granularity", "router", "region_grid"):
        older["routing"].pop(key)  # written before these settings: their values now are its behaviour
    older["model"].pop("shared_experts")  # written before the setting: it had none, which the run asks for
    run.settings += ["model.shared_experts=0", "routing.gate_input=high"]
    today["model"]["shared_experts"] = 0
    finished_run(run.folder, older)
    lines = []
    assert runner.train_all([run], tmp_path / "data", demo=True, log=lines.append) == 0
    assert any("finished run" in line for line in lines), lines

    stale = runner.PlannedRun("stale", 0, MULTITASK, tmp_path / "grid" / "stale" / "seed_0", ["train.epochs=2"])
    today = parse_cli(train_mlt_model.CONFIG, runner.command(stale, tmp_path / "data", demo=True)[2:],
                      train_mlt_model.DEMO)
    changed = json.loads(json.dumps(today))
    changed["model"]["shared_experts"] = 1 - today["model"]["shared_experts"]
    changed["routing"]["top_p"] = 0.5
    finished_run(stale.folder, changed)
    with pytest.raises(GridError, match=r"would train differently today") as raised:
        runner.train_all([stale], tmp_path / "data", demo=True)
    assert (f"model.shared_experts: {changed['model']['shared_experts']} in the run -> "
            f"{today['model']['shared_experts']} now") in str(raised.value)
    assert "routing.top_p: 0.5 in the run -> 0.8 now" in str(raised.value) and str(stale.folder) in str(raised.value)
