"""experiments/task_gradients.py: each task's gradient on the shared layers, and how the tasks' gradients agree."""
import json
import math

import torch

import train_mlt_model
from codebase.config import parse_cli
from codebase.engine import MultiTaskLoss, TrainStep, gate_weights, shared_parameters, step_inputs
from experiments import task_gradients

TINY = ["data.grading_size=64,96", "data.segmentation_size=64,96", "model.aspp_channels=16",
        "model.decoder_channels=16", "model.head_hidden=16", "train.batch_size=2", "data.num_workers=0"]


def untrained_run(root, folder):
    """A multi-task run folder (config.json, model.pth) at its initial weights: nothing is trained."""
    argv = ["--demo", "--data-root", str(root), "--set", "seed=3"]
    for assignment in TINY:
        argv += ["--set", assignment]
    config = parse_cli(train_mlt_model.CONFIG, argv, train_mlt_model.DEMO, validate=train_mlt_model.validate)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    _, model = task_gradients.run_model(folder, "initial")
    torch.save(model.state_dict(), folder / "model.pth")
    return folder, config


def test_norms_and_cosines_rebuild_the_gradient_of_the_summed_loss(synthetic_root, tmp_path):
    folder, config = untrained_run(synthetic_root, tmp_path / "run")
    _, model = task_gradients.run_model(folder, "last")
    pairs = task_gradients.training_pairs(config, 1)
    torch.manual_seed(0)  # the same dropout masks in both forwards
    result = task_gradients.task_gradients(model, config["loss"], pairs, dense=True)
    tasks = list(result["norm"])
    assert set(tasks) == set(config["model"]["task_specs"])
    for task in tasks:
        assert result["norm"][task] > 0, task  # every task reaches the backbone
        assert math.isclose(result["cosine"][task][task], 1.0, abs_tol=1e-5)
        for other in tasks:
            assert math.isclose(result["cosine"][task][other], result["cosine"][other][task], abs_tol=1e-6)
    # |sum_t g_t|^2 = sum_t,s |g_t| |g_s| cos(t, s), against one ordinary backward of the summed losses
    rebuilt = sum(result["norm"][t] * result["norm"][s] * result["cosine"][t][s] for t in tasks for s in tasks)
    step = TrainStep(model, MultiTaskLoss(model.tasks, config["loss"], gate_weights(config["loss"]))).train()
    torch.manual_seed(0)
    losses = step(*step_inputs(pairs[0], model.tasks, torch.device("cpu"), True))[0]
    model.zero_grad()
    sum(losses.values()).backward()
    direct = sum(float((p.grad.double() ** 2).sum()) for p in shared_parameters(model) if p.grad is not None)
    assert math.isclose(rebuilt, direct, rel_tol=1e-3), (rebuilt, direct)


def test_the_tool_prints_every_task_and_refuses_a_run_of_another_script(synthetic_root, tmp_path, capsys):
    folder, config = untrained_run(synthetic_root, tmp_path / "run")
    out = tmp_path / "grads.json"
    assert task_gradients.main([str(folder), "--weights", "initial", "--batches", "1", "--out", str(out)]) is None
    printed = capsys.readouterr().out
    for task in config["model"]["task_specs"]:
        assert f"| {task.split('_', 1)[1].upper()} | " in printed, task
    report = json.loads(out.read_text())[str(folder)]
    assert report["weights"] == "initial" and report["batches"] == 1 and set(report["norm"]) == set(config["model"]["task_specs"])

    other = tmp_path / "classifier"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"kind": "classifier", "model": {}}))
    assert task_gradients.run_tool(lambda: task_gradients.main([str(other)])) == 2
    assert f"{other}: a classifier run; task gradients need a run of train_mlt_model.py" in capsys.readouterr().err
