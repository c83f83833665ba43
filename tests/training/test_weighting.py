import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from codebase.training import weighting as mtw
from codebase.training.weighting import WEIGHTINGS, Weighting, make_weighting, register

TASKS = ("a", "b")


def losses_of(*values, requires_grad=False):
    return {task: torch.tensor(float(v), requires_grad=requires_grad) for task, v in zip(TASKS, values)}


# ---------------------------------------------------------------------------------------------
# Registry and settings


def test_registry_holds_every_method():
    assert set(WEIGHTINGS) >= {"fixed", "uncertainty", "dwa", "rlw", "famo", "gradnorm", "pcgrad", "cagrad"}
    assert {name for name, cls in WEIGHTINGS.items() if cls.owns_backward} == {"gradnorm", "pcgrad", "cagrad"}


def test_a_weighting_added_by_one_registry_entry_is_found(monkeypatch):
    monkeypatch.setattr(mtw, "WEIGHTINGS", dict(WEIGHTINGS))

    @register("halved")
    class Halved(Weighting):
        setting_prefix = "halved_"
        settings = {"factor": mtw.Setting(0.5, float, lambda v: v > 0, "> 0")}

        def __init__(self, tasks, factor=0.5):
            super().__init__(tasks)
            self.factor = factor

        def combine(self, losses):
            return self.factor * super().combine(losses)

    made = mtw.make_weighting("halved", TASKS, {"halved_factor": 0.25, "cagrad_c": 0.1})
    assert isinstance(made, Halved) and made.factor == 0.25
    assert float(made.combine(losses_of(2.0, 6.0))) == 2.0
    assert "halved_factor" in mtw.default_settings()
    assert "halved" not in WEIGHTINGS  # the registry proper is untouched


def test_make_weighting_rejects_bad_names_and_settings():
    with pytest.raises(ValueError, match=r"loss.weighting must be one of .*cagrad.*got 'nash'"):
        make_weighting("nash", TASKS, {})
    with pytest.raises(ValueError, match=r"unknown loss weighting settings loss.dwa_temp; dwa takes loss.dwa_temperature"):
        make_weighting("dwa", TASKS, {"dwa_temp": 2.0})
    with pytest.raises(ValueError, match=r"loss.dwa_temperature must be > 0, got -1.0"):
        make_weighting("dwa", TASKS, {"dwa_temperature": -1})
    with pytest.raises(ValueError, match=r"loss.cagrad_c must be a float, got 'big'"):
        make_weighting("cagrad", TASKS, {"cagrad_c": "big"})
    with pytest.raises(ValueError, match=r"loss.cagrad_rescale must be a bool"):
        make_weighting("cagrad", TASKS, {"cagrad_rescale": 1})
    with pytest.raises(ValueError, match=r"loss.rlw_seed must be a int, got True"):
        make_weighting("rlw", TASKS, {"rlw_seed": True})
    with pytest.raises(ValueError, match=r"loss.task_weights names tasks not in task_specs: \['c'\]"):
        make_weighting("fixed", TASKS, {"task_weights": {"c": 2.0}})
    with pytest.raises(ValueError, match=r"loss.task_weights must be a \{task: non-negative number\}"):
        make_weighting("fixed", TASKS, {"task_weights": {"a": -1.0}})
    with pytest.raises(ValueError, match="distinct task names"):
        make_weighting("fixed", ["a", "a"], {})
    # Other methods' keys (a config lists every default) are accepted.
    weighting = make_weighting("cagrad", TASKS, mtw.default_settings() | {"cagrad_c": 0.0})
    assert weighting.c == 0.0
    with pytest.raises(ValueError, match=r"must be a non-empty subset of \('a', 'b'\)"):
        weighting.combine({"z": torch.tensor(1.0)})


def test_fixed_weights_and_subsets():
    weighting = make_weighting("fixed", TASKS, {"task_weights": {"b": 3}})
    assert float(weighting.combine(losses_of(1.0, 2.0))) == 7.0
    assert weighting.task_weights() == {"a": 1.0, "b": 3.0}
    assert float(weighting.combine({"b": torch.tensor(2.0)})) == 6.0
    assert weighting.task_weights() == {"a": 0.0, "b": 3.0}


# ---------------------------------------------------------------------------------------------
# Loss-based methods


def test_uncertainty_is_kendalls_form_on_the_tasks_present():
    """sum_t exp(-s_t) L_t + s_t over the tasks in the step; gradients worked by hand."""
    tasks = ("a", "b", "c")
    weighting = make_weighting("uncertainty", tasks, {})
    s = torch.tensor([0.3, -0.7, 1.1])
    with torch.no_grad():
        weighting.log_variances.copy_(s)
    base = torch.tensor([0.8, 2.5, 0.1])
    for subset in (("a", "c"), tasks):
        chosen = [i for i, name in enumerate(tasks) if name in subset]
        values = base.clone().requires_grad_(True)
        total = weighting.combine({name: values[i] for i, name in enumerate(tasks) if name in subset})
        total.backward()
        expected = sum(math.exp(-s[i]) * base[i] + s[i] for i in chosen)
        assert float(total.detach()) == pytest.approx(float(expected), rel=1e-6)
        for i in range(3):  # d/dL_t = exp(-s_t); d/ds_t = 1 - exp(-s_t) L_t; absent tasks get nothing
            present = i in chosen
            assert float(values.grad[i]) == pytest.approx(math.exp(-s[i]) if present else 0.0, rel=1e-6)
            assert float(weighting.log_variances.grad[i]) == pytest.approx(
                float(1 - math.exp(-s[i]) * base[i]) if present else 0.0, rel=1e-6, abs=1e-7)
        weighting.log_variances.grad = None
    assert weighting.task_weights() == pytest.approx({name: math.exp(-v) for name, v in zip(tasks, s.tolist())})
    assert weighting.extra_parameters() == [weighting.log_variances]
    assert set(weighting.state_dict()) == {"log_variances"}  # the key earlier checkpoints hold


def test_dwa_weights_from_two_epochs_worked_by_hand():
    tasks = ("a", "b", "c")
    weighting = make_weighting("dwa", tasks, {"dwa_temperature": 2.0})
    losses = {t: torch.tensor(1.0) for t in tasks}
    weighting.end_epoch(1, {"a": 1.0, "b": 2.0, "c": 4.0})
    assert float(weighting.combine(losses)) == 3.0  # epochs 1 and 2: weight 1 each
    weighting.end_epoch(2, {"a": 0.5, "b": 2.0, "c": 6.0})
    # ratios 0.5, 1, 1.5; / T=2 -> 0.25, 0.5, 0.75; 3 * softmax: e^x = 1.2840, 1.6487, 2.1170 (sum 5.0497)
    exps = [math.exp(0.25), math.exp(0.5), math.exp(0.75)]
    expected = [3 * e / sum(exps) for e in exps]
    weighting.combine(losses)
    assert list(weighting.task_weights().values()) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx([0.7628, 0.9795, 1.2577], abs=1e-4)
    # The next epoch uses epochs 2 and 3 only: ratios 1, 1, 1 -> equal weights.
    weighting.end_epoch(3, {"a": 0.5, "b": 2.0, "c": 6.0})
    weighting.combine(losses)
    assert list(weighting.task_weights().values()) == pytest.approx([1.0, 1.0, 1.0])
    # The history checkpoints.
    restored = make_weighting("dwa", tasks, {})
    restored.load_state_dict(weighting.state_dict())
    restored.end_epoch(4, {"a": 1.0, "b": 2.0, "c": 6.0})
    weighting.end_epoch(4, {"a": 1.0, "b": 2.0, "c": 6.0})
    torch.testing.assert_close(restored.weights, weighting.weights)
    assert restored.weights[0] > restored.weights[1]
    with pytest.raises(ValueError, match=r"missing \['c'\]"):
        weighting.end_epoch(5, {"a": 1.0, "b": 1.0})


def test_rlw_draws_softmax_of_normals_from_a_seeded_generator():
    weighting = make_weighting("rlw", TASKS, {"rlw_seed": 7})
    draws = torch.randn(2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    expected = 2 * torch.softmax(draws, dim=0)  # T softmax: the weights sum to T = 2
    total = weighting.combine(losses_of(1.0, 3.0))
    assert float(total) == pytest.approx(float(expected[0] + 3 * expected[1]), rel=1e-6)
    assert sum(weighting.task_weights().values()) == pytest.approx(2.0)
    # Same seed, same draws; the generator state checkpoints.
    state = weighting.state_dict()
    next_draw = weighting.combine(losses_of(1.0, 3.0))
    again = make_weighting("rlw", TASKS, {"rlw_seed": 0})
    again.load_state_dict(state)
    assert float(again.combine(losses_of(1.0, 3.0))) == float(next_draw)
    assert float(next_draw) != float(total)


def test_famo_two_task_step_worked_by_hand():
    weighting = make_weighting("famo", TASKS, {"famo_lr": 0.025, "famo_decay": 0.0, "famo_eps": 1e-8})
    values = torch.tensor([1.0, 4.0], requires_grad=True)
    total = weighting.combine({"a": values[0], "b": values[1]})
    total.backward()
    # z = (1/2, 1/2), c = 1/2 / 1 + 1/2 / 4 = 0.625: d total / d L_t = T z_t / (c L_t) = 1.6, 0.4 (T = 2)
    torch.testing.assert_close(values.grad, torch.tensor([1.6, 0.4]))
    assert list(weighting.task_weights().values()) == pytest.approx([1.6, 0.4])
    # Task a halved, b unchanged: improvement (ln 2, 0); softmax Jacobian at 1/2 gives
    # gradient (ln2 / 4, -ln2 / 4); Adam's first step is lr * sign -> logits (-0.025, 0.025).
    weighting.after_step(losses_of(0.5, 4.0))
    torch.testing.assert_close(weighting.logits, torch.tensor([-0.025, 0.025]), rtol=0, atol=1e-6)
    weighting.combine(losses_of(1.0, 1.0))
    z_b = 1 / (1 + math.exp(-0.05))  # equal losses: the weight is T z_b
    assert weighting.task_weights()["b"] == pytest.approx(2 * z_b, rel=1e-5)
    with pytest.raises(RuntimeError, match="after_step needs a combine"):
        weighting.after_step(losses_of(1.0, 1.0))
        weighting.after_step(losses_of(1.0, 1.0))


def test_small_adam_matches_torch_adam():
    start = torch.tensor([0.5, -1.0, 2.0])
    mine, theirs = start.clone(), start.clone().requires_grad_(True)
    adam = mtw._SmallAdam(3, lr=0.1, weight_decay=0.01)
    reference = torch.optim.Adam([theirs], lr=0.1, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        grad = torch.randn(3, generator=generator)
        adam.step(mine, grad)
        theirs.grad = grad.clone()
        reference.step()
    torch.testing.assert_close(mine, theirs.detach())


# ---------------------------------------------------------------------------------------------
# Gradient methods on Gram matrices


def gram_of(*grads):
    matrix = torch.tensor(grads, dtype=torch.float64)
    return matrix, matrix @ matrix.T


def test_pcgrad_projection_2d_by_hand():
    grads, gram = gram_of([1.0, 0.0], [-1.0, 1.0])
    coefficients = mtw.pcgrad_coefficients(gram, [[1], [0]])
    projected = coefficients @ grads
    # g1 - (g1.g2 / |g2|^2) g2 = (1, 0) + (-1, 1) / 2; g2 - (g2.g1 / |g1|^2) g1 = (0, 1)
    torch.testing.assert_close(projected, torch.tensor([[0.5, 0.5], [0.0, 1.0]], dtype=torch.float64))
    assert projected[0] @ grads[1] >= 0 and projected[1] @ grads[0] >= 0
    weighting = make_weighting("pcgrad", TASKS, {})
    weights = weighting.coefficients([0, 1], gram, None)
    torch.testing.assert_close(weights @ grads, torch.tensor([0.5, 1.5], dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([2.0, 1.5], dtype=torch.float64))


def test_pcgrad_leaves_agreeing_gradients_alone_and_removes_conflicts():
    grads, gram = gram_of([1.0, 0.2], [0.5, 1.0])
    weighting = make_weighting("pcgrad", TASKS, {"pcgrad_seed": 3})
    torch.testing.assert_close(weighting.coefficients([0, 1], gram, None), torch.ones(2, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        grads = torch.randn(3, 5, generator=generator, dtype=torch.float64)
        projected = mtw.pcgrad_coefficients(grads @ grads.T, [[1], [0], []]) @ grads
        if grads[0] @ grads[1] < 0:
            assert projected[0] @ grads[1] == pytest.approx(0.0, abs=1e-12)
            assert projected[1] @ grads[0] == pytest.approx(0.0, abs=1e-12)
        else:
            torch.testing.assert_close(projected[:2], grads[:2])


def brute_force_cagrad(grads, c, points=200_000):
    """max over d on the circle |d - g0| = c |g0| of min_t g_t . d (2-D gradients)."""
    g0 = grads.mean(0)
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    circle = g0.numpy() + c * float(g0.norm()) * np.stack([np.cos(angles), np.sin(angles)], 1)
    worst = (circle @ grads.numpy().T).min(1)
    return circle[worst.argmax()]


def test_cagrad_with_c_zero_is_the_equal_weight_gradient():
    grads, gram = gram_of([1.0, 0.0, 2.0], [-3.0, 1.0, 0.5], [0.2, 0.2, -4.0])
    weighting = make_weighting("cagrad", ("a", "b", "c"), {"cagrad_c": 0.0})
    weights = weighting.coefficients([0, 1, 2], gram, None)
    assert weights.tolist() == pytest.approx([1.0] * 3)  # T x the mean gradient = the plain sum
    assert mtw.cagrad_coefficients(gram.numpy(), 0.0).tolist() == [1 / 3] * 3  # the paper's mean scale


@pytest.mark.parametrize("grads", [([1.0, 0.0], [0.0, 0.2]), ([1.0, 0.0], [-0.8, 0.6]),
                                   ([2.0, 1.0], [-1.0, 0.3], [0.1, -0.5])])
def test_cagrad_matches_the_primal_optimum_and_favours_the_worse_task(grads):
    grads, gram = gram_of(*grads)
    c = 0.5
    tasks = tuple("abc"[:len(grads)])
    weighting = make_weighting("cagrad", tasks, {"cagrad_c": c, "cagrad_rescale": False})
    direction = weighting.coefficients(list(range(len(grads))), gram, None) @ grads / len(grads)  # mean scale
    expected = brute_force_cagrad(grads, c)
    np.testing.assert_allclose(direction.numpy(), expected, atol=2e-3 * float(grads.norm()))
    g0 = grads.mean(0)
    assert (grads @ direction).min() > (grads @ g0).min() + 1e-3  # the worst task improves more
    rescaled = make_weighting("cagrad", tasks, {"cagrad_c": c}).coefficients(list(range(len(grads))), gram, None)
    torch.testing.assert_close(rescaled @ grads / len(grads), direction / (1 + c ** 2))


def test_cagrad_moves_toward_the_task_with_the_smaller_gradient_by_hand():
    # g1 = (1, 0), g2 = (0, 1/5): g0 = (1/2, 1/10) mostly serves task 1; CAGrad tilts toward g2.
    grads, gram = gram_of([1.0, 0.0], [0.0, 0.2])
    weighting = make_weighting("cagrad", TASKS, {"cagrad_c": 0.4, "cagrad_rescale": False})
    weights = weighting.coefficients([0, 1], gram, None) / 2  # back to the paper's mean scale
    direction = weights @ grads
    g0 = grads.mean(0)
    assert weights[1] > weights[0] / 5 and weights[1] > 0.5
    assert direction[1] / direction.norm() > g0[1] / g0.norm()
    assert float((direction - g0).norm()) == pytest.approx(0.4 * float(g0.norm()), rel=1e-6)


def test_cagrad_reaches_the_dual_bound_on_random_and_conflicting_gradients():
    """Weak duality: every simplex w bounds the worst improvement by w . b + c |g0| |g_w|; a direction
    that reaches the smallest bound (found here by multi-start SLSQP on the dual) is optimal."""
    from scipy.optimize import minimize
    rng = np.random.default_rng(1)
    for trial in range(30):
        count, size = int(rng.integers(2, 8)), int(rng.integers(2, 40))
        grads = rng.normal(size=(count, size)) * rng.uniform(0.01, 10, size=(count, 1))
        if trial % 3 == 0:  # nearly opposite gradients: a combination almost cancels
            grads[1] = -0.5 * grads[0] + 0.01 * rng.normal(size=size)
        gram, c = grads @ grads.T, float(rng.uniform(0.05, 1.5))
        direction = mtw.cagrad_coefficients(gram, c) @ grads
        mean = grads.mean(0)
        assert np.linalg.norm(direction - mean) <= c * np.linalg.norm(mean) * (1 + 1e-6)
        achieved = (grads @ direction).min()

        def bound(w):
            return w @ grads @ mean + c * np.linalg.norm(mean) * np.linalg.norm(w @ grads)

        starts = [np.full(count, 1 / count)] + [rng.dirichlet(np.ones(count)) for _ in range(4)]
        smallest = min(minimize(bound, start, method="SLSQP", bounds=[(0, 1)] * count, options={"ftol": 1e-14},
                                constraints={"type": "eq", "fun": lambda w: w.sum() - 1}).fun for start in starts)
        assert achieved <= smallest + 1e-9 * gram.max()
        assert achieved == pytest.approx(smallest, abs=1e-6 * gram.max())


def test_gradnorm_moves_weight_to_the_slower_task_by_hand():
    grads, gram = gram_of([1.0, 0.0], [0.0, 1.0])
    weighting = make_weighting("gradnorm", TASKS, {"gradnorm_alpha": 1.5, "gradnorm_lr": 0.025})
    first = weighting.coefficients([0, 1], gram, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert first.tolist() == [1.0, 1.0]
    # The first step records L(0) and does not move the weights.
    torch.testing.assert_close(weighting.weights, torch.ones(2))
    # Task a fell to 0.1, b only to 0.9: inverse rates (0.2, 1.8), a over its target, b under;
    # Adam's first step moves each weight by lr against the sign: (0.975, 1.025), sum 2.
    weighting.coefficients([0, 1], gram, torch.tensor([0.1, 0.9], dtype=torch.float64))
    torch.testing.assert_close(weighting.weights, torch.tensor([0.975, 1.025]))
    for _ in range(30):
        weighting.coefficients([0, 1], gram, torch.tensor([0.1, 0.9], dtype=torch.float64))
    assert weighting.weights[1] > 1.5 > 0.5 > weighting.weights[0]
    assert float(weighting.weights.sum()) == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------
# The backward pass of gradient methods


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(4, 3)
        self.head_a, self.head_b = nn.Linear(3, 1), nn.Linear(3, 1)

    def forward(self, inputs, targets):
        features = torch.tanh(self.shared(inputs))
        loss_a = (self.head_a(features).squeeze(1) - targets[:, 0]).pow(2).mean()
        loss_b = (self.head_b(features).squeeze(1) - targets[:, 1]).pow(2).mean()
        extra = 0.1 * features.pow(2).mean()
        return {"a": loss_a, "b": loss_b}, extra


def batch():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(16, 4, generator=generator)
    targets = torch.stack([inputs[:, 0] * 2, -inputs[:, 0] + inputs[:, 1]], 1)
    return inputs, targets


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


def run_backward(model, weighting, scaler=None, reduce=None):
    inputs, targets = batch()
    model.zero_grad()
    losses, extra = model(inputs, targets)
    weighting.backward(losses, extra, list(model.shared.parameters()), scaler=scaler, reduce=reduce)
    shared = torch.cat([p.grad.reshape(-1) for p in model.shared.parameters()])
    heads = {name: p.grad.clone() for name, p in model.named_parameters() if not name.startswith("shared")}
    return shared, heads


@pytest.mark.parametrize("name,settings", [("cagrad", {"cagrad_c": 0.4}), ("pcgrad", {}), ("cagrad", {"cagrad_c": 0.0})])
def test_gradient_method_backward_writes_the_combination(name, settings):
    model = TwoHeads()
    weighting = make_weighting(name, TASKS, settings)
    reference_method = make_weighting(name, TASKS, settings)
    expected_shared, expected_heads, weights = reference_grads(
        model, lambda gram: reference_method.coefficients([0, 1], gram, None))
    shared, heads = run_backward(model, weighting)
    torch.testing.assert_close(shared, expected_shared)
    for key in heads:
        torch.testing.assert_close(heads[key], expected_heads[key])
    assert list(weighting.task_weights().values()) == pytest.approx(weights.tolist(), rel=1e-5)


@pytest.mark.parametrize("name,settings", [("cagrad", {"cagrad_c": 0.0}), ("cagrad", {"cagrad_c": 0.4}), ("pcgrad", {})])
def test_gradient_method_backward_with_grad_scaler_and_reduce(name, settings):
    model = TwoHeads()

    def method(gram):
        return make_weighting(name, TASKS, settings).coefficients([0, 1], gram, None)

    expected_shared, expected_heads, _ = reference_grads(model, method)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    shared, heads = run_backward(model, make_weighting(name, TASKS, settings), scaler=scaler)
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
    weighting.backward(losses, extra, list(model.shared.parameters()), reduce=lambda m: m * math.inf)
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


# ---------------------------------------------------------------------------------------------
# End to end: every method trains a two-task toy model


@pytest.mark.parametrize("name", sorted(["fixed", "uncertainty", "dwa", "rlw", "famo", "gradnorm", "pcgrad", "cagrad"]))
def test_every_method_trains_a_two_task_toy_model(name):
    model = TwoHeads()
    weighting = make_weighting(name, TASKS, {})
    optimizer = torch.optim.Adam(list(model.parameters()) + weighting.extra_parameters(), lr=0.03)
    inputs, targets = batch()
    first = None
    epoch_sums = {t: 0.0 for t in TASKS}
    for step in range(1, 101):
        optimizer.zero_grad(set_to_none=True)
        losses, extra = model(inputs, targets)
        if first is None:
            first = {t: float(v.detach()) for t, v in losses.items()}
        weighting.backward(losses, extra, list(model.shared.parameters()))
        optimizer.step()
        with torch.no_grad():
            weighting.after_step(model(inputs, targets)[0])
        for t in TASKS:
            epoch_sums[t] += float(losses[t].detach())
        if step % 10 == 0:
            weighting.end_epoch(step // 10, {t: epoch_sums[t] / 10 for t in TASKS})
            epoch_sums = {t: 0.0 for t in TASKS}
    with torch.no_grad():
        last = {t: float(v) for t, v in model(inputs, targets)[0].items()}
    for t in TASKS:
        assert last[t] < 0.5 * first[t], (t, first[t], last[t])
    assert all(math.isfinite(w) for w in weighting.task_weights().values())


METHODS = sorted(["fixed", "uncertainty", "dwa", "rlw", "famo", "gradnorm", "pcgrad", "cagrad"])


def train_toy(model, weighting, steps, start=0, device="cpu"):
    """SGD steps (stateless optimizer) on the toy model; the task weights after each step."""
    optimizer = torch.optim.SGD(list(model.parameters()) + weighting.extra_parameters(), lr=0.05)
    inputs, targets = (t.to(device) for t in batch())
    seen = []
    for step in range(start + 1, start + steps + 1):
        optimizer.zero_grad(set_to_none=True)
        losses, extra = model(inputs, targets)
        weighting.backward(losses, extra, list(model.shared.parameters()))
        optimizer.step()
        with torch.no_grad():
            weighting.after_step(model(inputs, targets)[0])
        weighting.end_epoch(step, {t: float(v.detach()) for t, v in losses.items()})
        seen.append(list(weighting.task_weights().values()))
    return seen


@pytest.mark.parametrize("name", METHODS)
def test_a_resumed_weighting_continues_exactly(name):
    model, weighting = TwoHeads(), make_weighting(name, TASKS, {})
    train_toy(model, weighting, 4)
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    weighting_state = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in weighting.state_dict().items()}
    continued = train_toy(model, weighting, 4, start=4)
    assert all(v.dtype != torch.float64 for v in weighting_state.values() if isinstance(v, torch.Tensor))  # MPS
    resumed_model, resumed = TwoHeads(), make_weighting(name, TASKS, {})
    resumed_model.load_state_dict(model_state)
    resumed.load_state_dict(weighting_state)
    assert train_toy(resumed_model, resumed, 4, start=4) == continued
    if name not in ("fixed", "cagrad"):  # these two have no state: the rest must change their weights
        assert continued[0] != continued[-1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", METHODS)
def test_every_method_runs_on_cuda_like_on_cpu(name):
    model, weighting = TwoHeads(), make_weighting(name, TASKS, {})
    on_cpu = train_toy(model, weighting, 5)
    model, weighting = TwoHeads().cuda(), make_weighting(name, TASKS, {}).cuda()
    on_cuda = train_toy(model, weighting, 5, device="cuda")
    np.testing.assert_allclose(np.array(on_cuda), np.array(on_cpu), rtol=1e-3, atol=1e-4)


def test_gradient_method_under_two_process_ddp_equals_one_process(tmp_path):
    """PCGrad (a non-linear combination) under DDP with an all-reduce-mean ``reduce``: the same
    gradients on both ranks, equal to one process's step on the whole batch."""
    name, out = "pcgrad", tmp_path / "grads.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "tests.training.ddp_weighting", name, str(out)]
    repository = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def test_a_shared_parameter_no_loss_reaches_keeps_no_gradient():
    used, unused = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([5.0]))
    losses = {"a": used.sum(), "b": (2 * used).pow(2).sum()}
    make_weighting("cagrad", TASKS, {}).backward(losses, None, [unused, used])
    assert unused.grad is None and used.grad is not None


class GramProbe(mtw.GradientWeighting):
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
