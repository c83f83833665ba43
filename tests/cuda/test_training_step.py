"""The multi-task training step on each device: autocast (bf16, fp16 with the GradScaler, an overflow
skipped and recovered), channels_last, grouped experts, the loss weightings, host synchronisation,
the demo step's peak memory. Each test runs on the CPU too (but the loss weightings' comparison with the
CPU); its ``cuda`` case needs a GPU."""
import contextlib

import pytest
import torch
from devices import CPU_AND_CUDA, CUDA
from step_setup import SIZE, batch_pair, make_training
from tiny_models import small_model

import codebase.engine as engine
import codebase.model as model_module
from codebase.training.stopping import check_finite

pytestmark = pytest.mark.slow  # trains small models for a few steps

PEAK_MEMORY_PROPERTY = "demo_step_peak_memory_gib"  # benchmarks/gpu_stages.py reads it from the report


@pytest.fixture
def exact_float32():
    """Float32 convolutions and matrix products without TF32 on CUDA, for comparisons within 1e-4."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def assert_close_gradients(model, reference, tolerance):
    """Each parameter's gradient within ``tolerance`` of the reference's, relative to its norm."""
    for (name, a), (_, b) in zip(model.named_parameters(), reference.named_parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if b.grad is not None:
            error = (a.grad.float() - b.grad.float()).norm()
            assert error <= tolerance * b.grad.float().norm() + 1e-7, (name, float(error), float(b.grad.norm()))


def parameters_of(training):
    return {name: p.detach().float().cpu().clone() for name, p in training.model.named_parameters()}


@pytest.mark.parametrize("device", CPU_AND_CUDA)
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_steps_train_in_reduced_precision(device, amp):
    training = make_training(device, amp)
    assert training.scaler.is_enabled() == (amp == "fp16")
    seen = []
    training.model.backbone.register_forward_hook(lambda module, args, out: seen.append(out[1].dtype))
    before = parameters_of(training)
    losses = [float(training.train_step(batch_pair(seed=step), False, 1, step)[0]) for step in range(1, 4)]
    assert set(seen) == {torch.bfloat16 if amp == "bf16" else torch.float16}
    assert all(torch.isfinite(torch.tensor(losses)))
    after = parameters_of(training)
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert all(p.dtype == torch.float32 for p in training.model.parameters())  # master weights stay fp32


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_an_fp16_step_that_overflows_is_skipped_and_training_recovers(device):
    training = make_training(device, "fp16")
    training.scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 60)  # every scaled fp16 gradient overflows
    before = parameters_of(training)
    loss, _, _ = training.train_step(batch_pair(), False, 1, 1)
    assert torch.isfinite(loss)  # the loss itself is fine: only the scaled gradients overflow
    assert training.scaler.get_scale() == 2.0 ** 59  # backed off
    after = parameters_of(training)
    assert all(torch.equal(before[name], after[name]) for name in before), "the overflowing step was taken"
    training.scaler.update(2.0 ** 10)
    loss, _, _ = training.train_step(batch_pair(seed=1), False, 1, 2)
    assert torch.isfinite(loss) and training.scaler.get_scale() == 2.0 ** 10
    recovered = parameters_of(training)
    assert any(not torch.equal(after[name], recovered[name]) for name in after), "no step after the overflow"
    assert all(torch.isfinite(value).all() for value in recovered.values())


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_a_channels_last_step_matches_the_contiguous_one(device, exact_float32):
    contiguous, channels_last = make_training(device, dropout=False), make_training(device, channels_last=True,
                                                                                   dropout=False)
    pair = batch_pair()
    first, _, _ = contiguous.train_step(pair, True, 1, 1)  # the gradients stay in .grad until the next step
    second, _, _ = channels_last.train_step(pair, True, 1, 1)
    torch.testing.assert_close(second, first, rtol=1e-4, atol=1e-5)
    convs = [m.weight for m in channels_last.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    # Another memory layout sums in another order, which BatchNorm amplifies in small gradients (a
    # 1x1 projection's, of norm 5e-3, differs by 2 % on a one-thread CPU): the gradient of the whole
    # model is compared, relative to its norm (1.7e-3 measured there); a wrong layout differs by O(1).
    flat = [torch.cat([p.grad.float().reshape(-1).cpu() for p in m.parameters() if p.grad is not None])
            for m in (channels_last.model, contiguous.model)]
    assert float((flat[0] - flat[1]).norm()) <= 1e-2 * float(flat[1].norm())


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_grouped_dense_experts_equal_the_sequential_form_forward_and_backward(device, exact_float32):
    grouped, sequential = (small_model(aspp_channels=16, decoder_channels=16, head_hidden=16).to(device)
                           for _ in range(2))  # training mode: BatchNorm statistics of the batch, updated per expert
    for model, form in ((grouped, True), (sequential, False)):
        for bank in model.experts.values():
            bank.grouped = form
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0  # the grouped form draws its dropout masks in another order
    images = torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(0)).to(device)
    outputs = {}
    for name, model in (("grouped", grouped), ("sequential", sequential)):
        logits = model(images, dense=True)["logits"]
        sum(value.float().pow(2).mean() for value in logits.values()).backward()
        outputs[name] = logits
    for task in outputs["grouped"]:
        torch.testing.assert_close(outputs["grouped"][task], outputs["sequential"][task], rtol=1e-4, atol=1e-5)
    assert_close_gradients(grouped, sequential, 1e-3 if device == "cpu" else 1e-2)
    for (name, a), (_, b) in zip(grouped.named_buffers(), sequential.named_buffers()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)  # BatchNorm statistics per expert


@contextlib.contextmanager
def synchronisations_allowed(counts, name):
    """Count a call of a function that synchronises on purpose, with sync debugging paused during it."""
    counts[name] = counts.get(name, 0) + 1
    mode = torch.cuda.get_sync_debug_mode() if torch.cuda.is_available() else 0
    if torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode(mode)


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_top_p_step_synchronises_only_to_plan_its_dispatch(device, monkeypatch):
    """A top-p training step (bf16 on CUDA, the step's bookkeeping of train_one_epoch included) reads
    from the device only where it must: codebase.networks.routing.dispatch_plan, once per side (an
    expert runs on the images that chose it, and the host needs their number), and check_finite, once
    per step (it stops a run before a non-finite loss reaches the weights). Anything else raises under
    torch.cuda.set_sync_debug_mode("error"); on the CPU the same code runs without the check."""
    counts = {}
    plan, finite = model_module.dispatch_plan, engine.check_finite

    def counted_plan(routings):
        with synchronisations_allowed(counts, "dispatch_plan"):
            return plan(routings)

    def counted_finite(*args, **kwargs):
        with synchronisations_allowed(counts, "check_finite"):
            return finite(*args, **kwargs)

    monkeypatch.setattr(model_module, "dispatch_plan", counted_plan)
    monkeypatch.setattr(engine, "check_finite", counted_finite)
    training = make_training(device, "bf16" if device == "cuda" else "off", top_p=0.6)
    pairs = [batch_pair(seed=seed) for seed in range(3)]
    training.train_step(pairs[0], False, 1, 1)  # warm-up: lazy initialisations (cuDNN, the optimizer state)
    pinned = [tuple({k: (v.pin_memory() if device == "cuda" else v) for k, v in side.items()} for side in pair)
              for pair in pairs[1:]]
    counts.clear()
    meter = engine.RoutingMeter()
    weights_sum = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        for number, pair in enumerate(pinned, start=2):
            loss, components, routings = training.train_step(pair, False, 1, number)
            meter.update(routings)
            step_weights = training.weighting.last_weights.double()
            weights_sum = step_weights if weights_sum is None else weights_sum + step_weights
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    assert counts == {"dispatch_plan": 2 * len(pinned), "check_finite": len(pinned)}
    assert any(not routing.dense for routing in routings.values())
    assert torch.isfinite(loss) and all(torch.isfinite(value).all() for value in components.values())
    assert all(0 < usage["experts_per_image"] <= 3 for usage in meter.compute().values())


@pytest.mark.parametrize("device", [CUDA])  # on the CPU it would compare the CPU with itself
@pytest.mark.parametrize("method", ["pcgrad", "famo"])
def test_loss_weightings_step_on_the_device_as_on_the_cpu(device, method, exact_float32):
    """Three fp32 steps of a gradient method and of one that needs the losses after the step give the
    CPU's losses and task weights (tests/training/weighting runs every method on a toy on each device);
    also under fp16 + GradScaler."""
    results = {}
    for where in ("cpu", device):
        training = make_training(where, weighting=method, dropout=False)
        losses = [float(training.train_step(batch_pair(seed=s), True, 1, s)[0]) for s in range(1, 4)]
        results[where] = (losses, training.weighting.task_weights())
    torch.testing.assert_close(results[device][0], results["cpu"][0], rtol=2e-3, atol=2e-3)
    for task, weight in results["cpu"][1].items():
        assert results[device][1][task] == pytest.approx(weight, rel=2e-3, abs=2e-3), task
    training = make_training(device, "fp16", weighting=method)
    for s in range(1, 4):
        check_finite(training.train_step(batch_pair(seed=s), True, 1, s)[0])
    assert all(torch.isfinite(torch.tensor(w)) for w in training.weighting.task_weights().values())


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_the_demo_step_on_the_device_reports_its_peak_memory(device, record_property):
    """One top-p step at the demo's size (resnet18, 7 tasks, 128x192, 8+8 images, default amp): its peak
    memory goes into the JUnit report (benchmarks/gpu_check.py's summary shows it)."""
    import train_mlt_model
    from codebase.config import parse_cli
    from codebase.model import build_model

    config = parse_cli(train_mlt_model.CONFIG, ["--demo", "--device", device], train_mlt_model.DEMO)
    torch.manual_seed(0)
    training = make_training(device, "auto" if device == "cuda" else "off", model=build_model(config))
    pair = batch_pair(config["train"]["batch_size"], tuple(config["data"]["grading_size"]))
    training.train_step(pair, True, 1, 1)  # the optimizer's state exists from here on
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    loss, _, _ = training.train_step(batch_pair(8, tuple(config["data"]["grading_size"]), seed=1), False, 1, 2)
    assert torch.isfinite(loss)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
        record_property(PEAK_MEMORY_PROPERTY, f"{peak:.2f}")
        print(f"demo step peak memory: {peak:.2f} GiB")
        assert 0 < peak < torch.cuda.get_device_properties(0).total_memory / 2**30
