"""Balanced routing: the balanced-assignment and dispatch-based load-balancing losses, noisy gating,
and routing statistics."""
import math

import pytest
import torch
from torch import nn

import train_mlt_model
from codebase.engine import GATE_REGULARISERS, MultiTaskLoss
from codebase.evaluation import plots
from codebase.evaluation.evaluate import RoutingMeter
from codebase.networks.experts import ExpertBank
from codebase.networks.layers import Gate
from codebase.networks.routing import (
    Routing,
    dispatch_plan,
    first_choice_shares,
    route,
    update_selection_bias,
)
from codebase.tasks import parse_tasks
from codebase.training.losses import (
    balanced_assignment,
    gate_balanced_assignment,
    gate_sparsity,
    gate_switch_balance,
)


def close(value, expected, tol=1e-6):
    return abs(float(torch.as_tensor(value).detach()) - expected) < tol


def test_switch_balance_on_hand_worked_dispatches():
    weights = torch.tensor([[0.5, 0.4, 0.1], [0.2, 0.7, 0.1]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, True, False]])
    # f = [1, 2, 0] / 3 dispatches, P = [0.35, 0.55, 0.10]: 3 * (0.35 / 3 + 0.55 * 2 / 3) = 1.45
    value = gate_switch_balance(weights, mask)
    assert close(value, 1.45)
    value.backward()
    # d/dw[b, e] = E f_e / B; the dispatch shares are counts and carry no gradient
    torch.testing.assert_close(weights.grad, torch.tensor([[0.5, 1.0, 0.0]] * 2))
    # Without a mask each image's top-1 expert is its dispatch: experts 0 and 1, f = [1/2, 1/2, 0].
    assert close(gate_switch_balance(weights.detach()), 3 * (0.35 + 0.55) / 2)
    # Every expert taking the same share of the images: 1, whatever the weights.
    assert close(gate_switch_balance(torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]),
                                     torch.eye(3, dtype=torch.bool)), 1.0)
    # One expert takes every image with all the weight: E.
    assert close(gate_switch_balance(torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 5)), 4.0)


def test_switch_balance_regulariser_reads_the_routing():
    logits = torch.tensor([[2.0, 0.0, 0.0], [2.0, 1.5, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    regulariser = GATE_REGULARISERS["switch_balance"]
    dense, sparse = route(logits, 0.8, dense=True), route(logits, 0.8)
    assert dense.mask.all()
    # Dense routing runs everything: the regulariser balances the top-1 choices [0, 0, 1, 2].
    assert close(regulariser(dense), gate_switch_balance(dense.weights, torch.eye(3, dtype=torch.bool)[[0, 0, 1, 2]]))
    assert sparse.mask.sum().item() > 4  # some image ran two experts: the regulariser counts both
    assert close(regulariser(sparse), gate_switch_balance(sparse.weights, sparse.mask))
    criterion = MultiTaskLoss(parse_tasks({"classification_mer": 3}), gate_weights={"switch_balance": 0.5})
    task_losses, gate, parts = criterion({"classification_mer": logits},
                                         {"classification_mer": torch.tensor([0, 0, 1, 2])},
                                         {"classification_mer": sparse})
    assert close(parts["loss_gate_switch_balance"], regulariser(sparse))
    assert close(gate, 0.5 * parts["loss_gate_switch_balance"], 1e-6)
    assert close(task_losses["classification_mer"], parts["loss_classification_mer"])


def train_toy_moe(switch_balance=0.0, noise=False, steps=300, seed=0, balanced_assignment=0.0, balance_rate=0.0):
    """A gate and 3 linear experts on 3 clusters of 8-d features, each cluster its own linear target,
    with top-p routing from the first step and a gate biased towards expert 0 at the start. An image
    that runs one expert gives the gate no gradient from the task loss (its renormalised weight is 1),
    so without balancing the router stays on expert 0. Returns the noise-free top-p routing of 300
    fresh images (100 per cluster)."""
    torch.manual_seed(seed)
    experts, features, top_p = 3, 8, 0.8
    centres, targets = torch.randn(experts, features) * 3, torch.randn(experts, features)
    gate = Gate(features, experts, hidden=16, noise=noise)
    with torch.no_grad():
        gate.net[2].bias.copy_(torch.tensor([3.0, 0.0, 0.0]))
    bank = ExpertBank([nn.Linear(features, 1) for _ in range(experts)])
    optimizer = torch.optim.Adam([*gate.parameters(), *bank.parameters()], lr=1e-2)
    for _ in range(steps):
        cluster = torch.randint(experts, (32,))
        x = centres[cluster] + torch.randn(32, features)  # [32, 8]
        y = (targets[cluster] * x).sum(dim=1, keepdim=True)  # [32, 1]
        routing = route(gate(x), top_p, gate.selection_bias)
        out = bank.mix((x,), routing.mixture, dispatch_plan({"toy": routing})["toy"])
        loss = (out - y).pow(2).mean() / 10 + 0.01 * gate_sparsity(routing.weights)
        loss = loss + switch_balance * GATE_REGULARISERS["switch_balance"](routing)
        loss = loss + balanced_assignment * GATE_REGULARISERS["balanced_assignment"](routing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if balance_rate:
            update_selection_bias(gate.selection_bias, routing, balance_rate)
    gate.eval()
    with torch.no_grad():
        cluster = torch.arange(experts).repeat(100)
        return route(gate(centres[cluster] + torch.randn(300, features)), top_p, gate.selection_bias)


def test_toy_moe_collapses_without_balancing():
    routing = train_toy_moe(switch_balance=0.0, noise=False)
    assert routing.mask.float().mean(dim=0).tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("seed", [0, 1])
def test_switch_balance_and_noisy_gating_keep_every_expert_in_use(seed):
    routing = train_toy_moe(switch_balance=0.3, noise=True, seed=seed)
    usage = routing.mask.float().mean(dim=0)  # [E] share of images that ran each expert
    assert usage.min() >= 0.2 and usage.max() <= 0.7, usage
    assert routing.experts_per_image.mean() <= 1.5  # still sparse: top-p keeps its saving


@pytest.mark.parametrize("seed", [1, 2])
def test_balanced_assignment_keeps_every_expert_in_use_with_one_expert_per_image(seed):
    routing = train_toy_moe(balanced_assignment=1.0, seed=seed)
    usage = routing.mask.float().mean(dim=0)
    assert usage.min() >= 0.2 and usage.max() <= 0.7, usage
    assert routing.experts_per_image.mean() <= 1.2  # balanced choices, each one sharp
    # the choice depends on the image: each cluster of the toy goes mostly to one expert
    per_cluster = routing.weights.argmax(dim=1).view(100, 3)  # images ordered cluster 0, 1, 2, 0, ...
    majority = [torch.bincount(per_cluster[:, c], minlength=3).max().item() for c in range(3)]
    assert min(majority) >= 80, majority


@pytest.mark.parametrize("seed", [0, 1])
def test_selection_bias_keeps_every_expert_in_use(seed):
    routing = train_toy_moe(balance_rate=0.05, seed=seed)
    usage = routing.mask.float().mean(dim=0)
    assert usage.min() >= 0.2 and usage.max() <= 0.7, usage
    assert routing.experts_per_image.mean() <= 1.5


def test_selection_bias_chooses_but_does_not_mix():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.5, 0.0], [1.0, 0.0, 0.9]], requires_grad=True)
    bias = torch.tensor([-3.0, 0.0, 0.0])
    biased, plain = route(logits, 0.6, bias), route(logits, 0.6)
    # Expert 0 loses its first places to the next preference of each image.
    assert plain.choice.tolist() == [0, 1, 0] and biased.choice.tolist() == [1, 1, 2]
    torch.testing.assert_close(biased.weights, plain.weights)  # the regularisers see the unbiased weights
    weights = torch.softmax(logits.detach(), dim=1)
    for b in range(3):  # mixed with the unbiased weights renormalised over the chosen experts
        chosen = biased.mask[b]
        torch.testing.assert_close(biased.mixture[b][chosen], weights[b][chosen] / weights[b][chosen].sum())
    biased.mixture.sum().backward()
    assert logits.grad is not None  # the mixture still carries the gate's gradient; the bias none
    # Dense routing runs every expert; the choice (what the bias balances) is still the biased one.
    assert route(logits, 0.6, bias, dense=True).mask.all() and route(logits, 0.6, bias, dense=True).choice.tolist() == [1, 1, 2]


def test_selection_bias_update_by_hand():
    routing = route(torch.tensor([[3.0, 0.0, 0.0]] * 3 + [[0.0, 2.0, 0.0]]), 0.8)
    torch.testing.assert_close(first_choice_shares(routing), torch.tensor([0.75, 0.25, 0.0]))
    bias = torch.zeros(3)
    update_selection_bias(bias, routing, 0.1)
    torch.testing.assert_close(bias, torch.tensor([-0.1, 0.1, 0.1]))  # above 1/3 down, below up
    summed = []
    update_selection_bias(bias, routing, 0.1, reduce=lambda tensors: summed.extend(tensors))
    assert len(summed) == 1 and summed[0].tolist() == [3.0, 1.0, 0.0]  # counts go to the reduction
    torch.testing.assert_close(bias, torch.tensor([-0.2, 0.2, 0.2]))


def test_gate_loads_weights_saved_without_a_selection_bias():
    gate = Gate(6, 3, hidden=8)
    state = {key: value for key, value in Gate(6, 3, hidden=8).state_dict().items() if key != "selection_bias"}
    gate.selection_bias.fill_(1.0)
    gate.load_state_dict(state)  # strict: the missing bias is read as zero
    assert gate.selection_bias.tolist() == [0.0, 0.0, 0.0]
    assert "selection_bias" in gate.state_dict()


def test_balanced_assignment_is_balanced_and_follows_the_preferences():
    torch.manual_seed(0)
    # 6 images, all preferring expert 0, images 2-3 a little less, images 4-5 least: the balanced
    # assignment keeps 0-1 on expert 0 and moves the others to the expert each prefers next.
    logits = torch.tensor([[4.0, 0.0, 0.0], [4.0, 0.0, 0.1], [2.0, 1.0, 0.0], [2.0, 1.2, 0.0],
                           [2.0, 0.0, 1.5], [2.0, 0.2, 1.4]])
    q = balanced_assignment(torch.softmax(logits, dim=1))
    torch.testing.assert_close(q.sum(dim=1), torch.ones(6))
    torch.testing.assert_close(q.sum(dim=0), torch.full((3,), 2.0), atol=0.05, rtol=0)
    assert q.argmax(dim=1).tolist() == [0, 0, 1, 1, 2, 2]
    assert q.requires_grad is False


def test_balanced_assignment_loss_by_hand():
    # Weights that already put each image on its balanced choice with weight ~1: nothing to change.
    exact = torch.eye(3).repeat(2, 1) * (1 - 2e-6) + 1e-6
    assert close(gate_balanced_assignment(exact), 0.0, 1e-4)
    # A collapsed router: every image prefers expert 0, images 2-5 a little less. The balanced choice
    # keeps 0-1 on expert 0 and sends 2-3 to expert 1 and 4-5 to expert 2: the loss is the mean of
    # -log w[b, choice_b], and on the logits its gradient is (softmax - onehot(choice)) / B.
    logits = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.1], [2.0, 1.0, 0.0], [2.0, 1.2, 0.0],
                           [2.0, 0.0, 1.5], [2.0, 0.2, 1.4]], requires_grad=True)
    weights = torch.softmax(logits, dim=1)
    value = gate_balanced_assignment(weights)
    choice = torch.tensor([0, 0, 1, 1, 2, 2])
    assert close(value, -weights.log()[torch.arange(6), choice].mean().item(), 1e-5)
    value.backward()
    expected = (weights.detach() - torch.nn.functional.one_hot(choice, 3)) / 6
    torch.testing.assert_close(logits.grad, expected)
    assert (logits.grad[2:, 0] > 0).all()  # descent lowers expert 0 for the images sent elsewhere
    assert close(gate_balanced_assignment(torch.ones(4, 1)), 0.0)  # one expert: nothing to balance


def test_noisy_gate_is_noise_free_in_evaluation_and_learns_its_scale():
    torch.manual_seed(0)
    gate, pooled = Gate(6, 3, hidden=8, noise=True), torch.randn(4000, 6)
    clean = gate.net(pooled)
    gate.eval()
    torch.testing.assert_close(gate(pooled), clean)
    gate.train()
    noise = gate(pooled) - clean  # [4000, 3]
    assert abs(noise.std().item() - math.log(2)) < 0.02  # softplus(0) at the start
    noise.pow(2).mean().backward()
    assert gate.noise.weight.grad.abs().sum() > 0 and gate.noise.bias.grad.abs().sum() > 0
    assert Gate(6, 3).noise is None and "noise.weight" not in Gate(6, 3).state_dict()


def meter_with(*masks):
    meter = RoutingMeter()
    for mask in masks:
        mask = torch.tensor(mask, dtype=torch.bool)
        meter.update({"segmentation_ma": Routing(mask.float(), mask.float(), mask)})
    return meter.compute()["segmentation_ma"]


def test_routing_meter_balance_statistics():
    stats = meter_with([[1, 0, 0], [1, 1, 0]], [[1, 0, 0], [0, 0, 1]])
    # 4 images, 5 dispatches [3, 1, 1]
    assert stats["usage"] == [0.75, 0.25, 0.25] and stats["experts_per_image"] == 1.25
    assert stats["busiest_share"] == 0.75
    shares = [0.6, 0.2, 0.2]
    assert close(stats["usage_entropy"], -sum(s * math.log(s) for s in shares) / math.log(3))
    collapsed = meter_with([[0, 1, 0], [0, 1, 0]])
    assert collapsed["busiest_share"] == 1.0 and str(collapsed["usage_entropy"]) == "0.0"
    assert close(meter_with([[1, 0], [0, 1]])["usage_entropy"], 1.0)
    assert meter_with([[1], [1]])["usage_entropy"] == 1.0  # one expert: nothing to balance


def test_router_usage_is_a_grid_of_small_panels():
    tasks = list(train_mlt_model.CONFIG["model"]["task_specs"])
    routing = {task: {"experts_per_image": 1.2, "usage": [0.5, 0.4, 0.3], "busiest_share": 0.5,
                      "usage_entropy": 0.97} for task in tasks}
    history = [{"epoch": epoch, "eval": {"routing": routing}} for epoch in (1, 2)]
    figures = plots.history_figures(history)
    usage = figures["router_usage"]
    assert [axes.get_title() for axes in usage.axes] == tasks  # 7 panels, no empty ones
    assert {round(axes.get_position().x0, 3) for axes in usage.axes}.__len__() == 4  # 4 columns
    assert {round(axes.get_position().y0, 3) for axes in usage.axes}.__len__() == 2  # 2 rows
    assert all(axes.get_ylim() == (-0.03, 1.03) for axes in usage.axes)  # shares on one scale
    width, height = usage.get_size_inches()
    assert width <= 16 and height <= 8
    titles = [axes.get_title() for axes in figures["router_experts"].axes]
    assert titles == ["experts per image", "busiest expert's share", "usage entropy / log E"]
