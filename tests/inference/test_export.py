"""export.py / inference.export: ONNX (onnxruntime) and TorchScript outputs equal PyTorch's for all
three model kinds, top-p and dense routing, at batch sizes 1-3; bad runs and outputs are refused."""
import json

import numpy as np
import onnxruntime
import pytest
import torch

import export
from codebase.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from inference.export import (
    CLASS_NAMES,
    description,
    export_run,
    exportable,
    input_size,
)
from inference.runs import build_model, load_run

pytestmark = pytest.mark.slow  # each ONNX export takes tens of seconds on 2 cores

SIZE = (64, 96)  # (height, width)
TASKS = {"classification_rg": 5, "classification_mer": 3, "segmentation_ma": 1, "segmentation_od": 1}
CONFIGS = {
    "classifier": {"model": {"backbone": "resnet18", "pretrained": "none", "head_hidden": 16, "dropout": 0.2},
                   "data": {"image_size": list(SIZE)}, "train": {}},
    "segmentation": {"model": {"backbone": "resnet18", "output_stride": 16, "pretrained": "none", "channels": 16,
                               "separable": False},
                     "data": {"image_size": list(SIZE)}, "train": {"threshold": 0.4}},
    "multitask": {"model": {"backbone": "resnet18", "pretrained": "none", "num_experts": 3, "task_specs": TASKS,
                            "aspp_channels": 16, "decoder_channels": 16, "head_hidden": 16},
                  "routing": {"top_p": 0.6}, "data": {"grading_size": list(SIZE), "segmentation_size": list(SIZE)},
                  "train": {}},
}


def save_run(folder, config, seed=0):
    """A run folder as load_run reads it: config.json and model.pth of a randomly initialised model.

    Gate weights and BatchNorm statistics are drawn wide, so routing picks one expert for some images
    and several for others, and normalisation is not the identity.
    """
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
        for gate in getattr(model, "gates", {}).values():
            for parameter in gate.parameters():
                parameter.normal_(0, 0.07)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), folder / "model.pth")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {kind: save_run(root / kind, config) for kind, config in CONFIGS.items()}


def images(batch, seed):
    return torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def reference(run, x, dense):
    with torch.no_grad():
        return {task: t.numpy() for task, t in run.predict(x, dense=dense if run.kind == "multitask" else None)["logits"].items()}


def test_wrapper_equals_the_models_own_routing(runs):
    run = load_run(runs["multitask"])
    x = images(8, seed=1)
    with torch.no_grad():
        routing = run.predict(x, dense=False)["routing"]
        experts_per_image = torch.cat([r.mask.sum(dim=1) for r in routing.values()])
        assert experts_per_image.min() == 1 and experts_per_image.max() > 1  # top-p selects, and not always one
        for dense in (False, True):
            ours = dict(zip(TASKS, exportable(run, dense)(x)))
            expected = reference(run, x, dense)
            for task in TASKS:
                np.testing.assert_allclose(ours[task].numpy(), expected[task], atol=1e-5)
        top_p, dense = exportable(run, False)(x), exportable(run, True)(x)
        assert max((a - b).abs().max().item() for a, b in zip(top_p, dense)) > 1e-3  # the two routings differ


@pytest.mark.parametrize("kind, dense", [("classifier", False), ("segmentation", False), ("multitask", False),
                                         ("multitask", True)])
def test_onnx_outputs_equal_pytorch(runs, tmp_path, kind, dense):
    out, json_path = export_run(runs[kind], "onnx", dense, tmp_path / "model.onnx")
    assert json_path == tmp_path / "model.onnx.json"
    run = load_run(runs[kind])
    tasks = list(run.task_specs)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == tasks
    assert session.get_inputs()[0].name == "images" and session.get_inputs()[0].shape[1:] == [3, *SIZE]
    for batch in (1, 2, 3):
        x = images(batch, seed=batch)
        expected = reference(run, x, dense)
        for task, value in zip(tasks, session.run(None, {"images": x.numpy()})):
            assert value.shape == expected[task].shape
            np.testing.assert_allclose(value, expected[task], atol=1e-4)

    record = json.loads(json_path.read_text())
    assert record["kind"] == kind and record["format"] == "onnx" and record["model_file"] == "model.onnx"
    assert record["input_size"] == list(SIZE) and record["tasks"] == tasks == list(record["outputs"])
    assert "note" not in record  # one trained size
    assert record["normalisation"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    assert record["lesion_threshold"] == (0.4 if kind == "segmentation" else 0.5)
    assert record["routing"] == ({"dense": "dense", "top": "top-p (p=0.6)"}["dense" if dense else "top"]
                                 if kind == "multitask" else None)
    expected_names = {t: CLASS_NAMES[t] for t in tasks if t.startswith("classification_")}
    assert record["class_names"] == expected_names
    assert all(len(names) == run.task_specs[t] for t, names in record["class_names"].items())


@pytest.mark.parametrize("kind, dense", [("classifier", False), ("segmentation", False), ("multitask", False),
                                         ("multitask", True)])
def test_torchscript_outputs_equal_pytorch(runs, tmp_path, kind, dense):
    out, _ = export_run(runs[kind], "torchscript", dense, tmp_path / "model.pt")
    scripted = torch.jit.load(str(out))
    run = load_run(runs[kind])
    for batch in (1, 2, 3):
        x = images(batch, seed=10 + batch)
        expected = reference(run, x, dense)
        with torch.no_grad():
            outputs = scripted(x)
        for task, value in zip(run.task_specs, outputs):
            np.testing.assert_allclose(value.numpy(), expected[task], atol=1e-4)


def test_multitask_run_with_two_trained_sizes_exports_at_the_segmentation_size(runs, tmp_path):
    config = json.loads((runs["multitask"] / "config.json").read_text())
    config["data"]["grading_size"] = [32, 48]
    folder = tmp_path / "two_sizes"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.pth").write_bytes((runs["multitask"] / "model.pth").read_bytes())
    run = load_run(folder)
    assert input_size(run) == SIZE
    record = description(run, exportable(run), input_size(run), "onnx", False, tmp_path / "m.onnx")
    assert record["input_size"] == list(SIZE)
    assert record["trained_sizes"] == {"grading": [32, 48], "segmentation": list(SIZE)}
    assert "64x96 for every task" in record["note"]


def test_cli_writes_beside_the_run_by_default(runs, capsys):
    assert export.main(["--run", str(runs["classifier"]), "--format", "torchscript"]) == 0
    written = runs["classifier"] / "model.torchscript.pt"
    assert written.is_file() and (runs["classifier"] / "model.torchscript.pt.json").is_file()
    assert capsys.readouterr().out.startswith(f"wrote {written}")


def error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_cli_missing_or_damaged_run_is_one_error_line_and_exit_2(runs, tmp_path, capsys):
    assert export.main(["--run", str(tmp_path / "nowhere")]) == 2
    assert str(tmp_path / "nowhere" / "config.json") in error_line(capsys)

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text((runs["classifier"] / "config.json").read_text())
    (damaged / "model.pth").write_bytes(b"not a checkpoint")
    assert export.main(["--run", str(damaged)]) == 2
    assert str(damaged) in error_line(capsys)

    (damaged / "config.json").write_text("{broken")
    assert export.main(["--run", str(damaged)]) == 2
    assert str(damaged / "config.json") in error_line(capsys)

    (damaged / "config.json").write_text(json.dumps({"model": {"backbone": "resnet18"}}))
    assert export.main(["--run", str(damaged)]) == 2
    assert "config.json" in error_line(capsys)


def test_cli_unwritable_out_is_one_error_line_and_exit_2(runs, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "model.onnx"  # its folder would have to be a file
    assert export.main(["--run", str(runs["classifier"]), "--out", str(out)]) == 2
    assert str(out) in error_line(capsys)
    assert export.main(["--run", str(runs["classifier"]), "--out", str(tmp_path)]) == 2
    assert str(tmp_path) in error_line(capsys)
    assert export.main(["--run", str(runs["classifier"]), "--dense"]) == 2
    assert "multi-task" in error_line(capsys)
