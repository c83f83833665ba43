"""The backward pass of both base classes, and the Adam step of a method's own weights."""
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from codebase.training.weighting import GradientWeighting, make_weighting
from codebase.training.weighting.base import AdamState
from tests.training.weighting.toy import TASKS, TwoHeads, batch


def test_adam_state_steps_as_torch_adam():
    start = torch.tensor([0.5, -1.0, 2.0])
    mine, theirs = start.clone(), start.clone().requires_grad_(True)
    adam = AdamState(3, lr=0.1, weight_decay=0.01)
    reference = torch.optim.Adam([theirs], lr=0.1, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        grad = torch.randn(3, generator=generator)
        adam.step(mine, grad)
        theirs.grad = grad.clone()
        reference.step()
    assert torch.equal(mine, theirs.detach())  # torch's own update, bit for bit
    assert int(adam.steps) == 5 and set(adam.state_dict()) == {"exp_avg", "exp_avg_sq", "steps"}


def reference_grads(model, weights_of_gram, factor=1.0):
    """Shared grads = factor * (sum_t w_t g_t + extra's grad); head grads from a plain backward."""
    inputs, targets = batch()
    model.zero_grad()
    losses, extra = model(inputs, targets)
    shared = list(model.shared.parameters())
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], shared, retain_graph=True)])
            for t in TASKS]
    grads = torch.stack(rows) * factor
    extra_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(extra, shared, retain_graph=True)]) * factor
    weights = weights_of_gram((grads @ grads.T).double()).float()
    combined = weights @ grads + extra_grad
    (losses["a"] + losses["b"] + extra).backward()
    heads = {name: p.grad.clone() for name, p in model.named_parameters() if not name.startswith("shared")}
    return combined, heads, weights


def heads_of(model):
    return [p for name, p in model.named_parameters() if not name.startswith("shared")]


def run_backward(model, weighting, scaler=None, reduce=None, task_specific=False):
    """task_specific: the heads are given, so the last backward may stop at them."""
    inputs, targets = batch()
    model.zero_grad()
    losses, extra = model(inputs, targets)
    weighting.reduce = reduce
    weighting.backward(losses, extra, list(model.shared.parameters()), scaler=scaler,
                       task_specific=heads_of(model) if task_specific else None)
    shared = torch.cat([p.grad.reshape(-1) for p in model.shared.parameters()])
    heads = {name: p.grad.clone() for name, p in model.named_parameters() if not name.startswith("shared")}
    return shared, heads


TORCHJD_METHODS = [("mgda", {}), ("upgrad", {}), ("aligned_mtl", {}), ("gradvac", {})]  # through the adapter


@pytest.mark.parametrize("task_specific", [False, True])
@pytest.mark.parametrize("name,settings", [("cagrad", {"cagrad_c": 0.4}), ("pcgrad", {}), ("cagrad", {"cagrad_c": 0.0})]
                         + TORCHJD_METHODS)
def test_gradient_method_backward_writes_the_combination(name, settings, task_specific):
    model = TwoHeads()
    weighting = make_weighting(name, TASKS, settings)
    reference_method = make_weighting(name, TASKS, settings)
    expected_shared, expected_heads, weights = reference_grads(
        model, lambda gram: reference_method.coefficients([0, 1], gram, None))
    shared, heads = run_backward(model, weighting, task_specific=task_specific)
    torch.testing.assert_close(shared, expected_shared)
    for key in heads:
        torch.testing.assert_close(heads[key], expected_heads[key])
    assert list(weighting.task_weights().values()) == pytest.approx(weights.tolist(), rel=1e-5)


@pytest.mark.parametrize("name,settings", [("cagrad", {"cagrad_c": 0.0}), ("cagrad", {"cagrad_c": 0.4}), ("pcgrad", {})]
                         + TORCHJD_METHODS)
def test_gradient_method_backward_with_grad_scaler_and_reduce(name, settings):
    model = TwoHeads()

    def method(gram):
        return make_weighting(name, TASKS, settings).coefficients([0, 1], gram, None)

    expected_shared, expected_heads, _ = reference_grads(model, method)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    shared, heads = run_backward(model, make_weighting(name, TASKS, settings), scaler=scaler, task_specific=True)
    # .grad holds scaled gradients (scaler.step unscales them); the unscaled result is the same.
    torch.testing.assert_close(shared / 1024.0, expected_shared)
    for key in heads:
        torch.testing.assert_close(heads[key] / 1024.0, expected_heads[key])
    # A reduce that doubles the per-task matrix (as if another process had the same gradients twice).
    doubled_shared, _, _ = reference_grads(model, method, factor=2.0)
    shared, heads = run_backward(model, make_weighting(name, TASKS, settings), reduce=lambda m: 2 * m)
    torch.testing.assert_close(shared, doubled_shared)
    for key in heads:
        torch.testing.assert_close(heads[key], expected_heads[key])


def test_gradient_method_backward_skips_state_updates_on_overflow():
    model = TwoHeads()
    weighting = make_weighting("gradnorm", TASKS, {})
    inputs, targets = batch()
    losses, extra = model(inputs, targets)
    weighting.reduce = lambda m: m * math.inf
    weighting.backward(losses, extra, list(model.shared.parameters()))
    assert not torch.isfinite(model.shared.weight.grad).all()
    torch.testing.assert_close(weighting.weights, torch.ones(2))
    assert torch.isnan(weighting.initial_losses).all()


def test_a_task_that_misses_the_shared_parameters_counts_as_zero():
    shared = nn.Parameter(torch.tensor([1.0, 2.0]))
    own = nn.Parameter(torch.tensor(3.0))
    losses = {"a": (shared * torch.tensor([1.0, -1.0])).sum(), "b": own ** 2}
    weighting = make_weighting("pcgrad", TASKS, {})
    weighting.backward(losses, None, [shared])
    torch.testing.assert_close(shared.grad, torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(own.grad, torch.tensor(6.0))


@pytest.mark.slow  # a two-process torchrun job
@pytest.mark.parametrize("name", ["pcgrad", "mgda", "gradvac"])
def test_gradient_method_under_two_process_ddp_equals_one_process(tmp_path, name):
    """A non-linear combination (PCGrad; MGDA and GradVac through torchjd) under DDP with an
    all-reduce-mean ``reduce``: the same gradients on both ranks, equal to one process's step on the
    whole batch."""
    out = tmp_path / "grads.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "tests.training.weighting.ddp_step", name, str(out)]
    repository = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    finished = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=repository,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    saved = torch.load(out, weights_only=True)
    model, weighting = TwoHeads(), make_weighting(name, TASKS, {})
    inputs, targets = batch()
    losses, extra = model(inputs, targets)
    weighting.backward(losses, extra, list(model.shared.parameters()))
    for key, parameter in model.named_parameters():
        torch.testing.assert_close(saved["grads"][key], parameter.grad, rtol=1e-5, atol=1e-6)
    assert saved["weights"] == pytest.approx(weighting.task_weights(), rel=1e-5)


@pytest.mark.parametrize("task_specific", [None, []])
def test_a_shared_parameter_no_loss_reaches_keeps_no_gradient(task_specific):
    used, unused = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([5.0]))
    losses = {"a": used.sum(), "b": (2 * used).pow(2).sum()}
    make_weighting("cagrad", TASKS, {}).backward(losses, None, [unused, used], task_specific=task_specific)
    assert unused.grad is None and used.grad is not None


def test_given_the_task_specific_parameters_the_last_backward_skips_the_shared_ones():
    """One backward per task (and the extra term) through the shared layer, and none more: the
    backward that fills the heads stops at them. Without them, or under torchrun (``reduce``), it is
    a full backward, one more pass through the shared layer."""
    passes = []

    def count(module, inputs, output):
        output.register_hook(lambda grad: passes.append(1))

    model = TwoHeads()
    model.shared.register_forward_hook(count)
    for task_specific, reduce, expected in [(True, None, 3), (False, None, 4), (True, lambda m: m, 4)]:
        passes.clear()
        run_backward(model, make_weighting("pcgrad", TASKS, {}), reduce=reduce, task_specific=task_specific)
        assert len(passes) == expected, (task_specific, reduce)


class GramProbe(GradientWeighting):
    """Equal weights; keeps the Gram matrix and losses it was given."""

    needs_losses = True

    def coefficients(self, indices, gram, losses):
        self.seen = gram, losses
        return torch.ones(len(indices), dtype=torch.float64)


def test_gradient_methods_see_unscaled_reduced_gradients_and_losses():
    model = TwoHeads()
    inputs, targets = batch()
    losses, _ = model(inputs, targets)
    rows = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], model.shared.parameters(),
                                                                               retain_graph=True)]) for t in TASKS])
    expected_gram = (rows @ rows.T).double()
    expected_losses = torch.stack([losses[t].detach() for t in TASKS]).double()
    probe = GramProbe(TASKS)
    run_backward(model, probe, scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 12))
    torch.testing.assert_close(probe.seen[0], expected_gram, rtol=1e-6, atol=0)
    torch.testing.assert_close(probe.seen[1], expected_losses)
    run_backward(model, probe, reduce=lambda m: 3 * m)
    torch.testing.assert_close(probe.seen[0], 9 * expected_gram, rtol=1e-6, atol=0)
    torch.testing.assert_close(probe.seen[1], 3 * expected_losses)
