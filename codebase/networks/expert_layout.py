"""Where the multi-task model's experts live and how a task's output is put together from them.

Two settings shape the layout (``model.shared_experts``, ``model.expert_pool``):

- ``expert_pool="task"`` (default): every task owns ``num_experts`` routed experts (``experts.<task>``),
  each ending in the task's outputs, as before these settings existed.
- ``expert_pool="shared"``: one pool of ``num_experts`` routed experts per side (``experts.pool_grading``,
  ``experts.pool_segmentation``), shared by the side's tasks as in MMoE / multi-gate M3ViT / Mod-Squad:
  each task keeps its own gate over the whole pool. The tasks of a side have different output counts
  (RG 5 grades, MER 3), so a pool expert computes a shared feature instead of logits: a grading expert is
  the usual classification head whose last linear layer gives ``head_hidden`` features, a segmentation
  expert the usual DeepLab decoder whose last 1x1 conv gives ``decoder_channels`` features at stride 4.
  Each task mixes the pool's features with its own routing weights and applies its own output layer
  (``task_outputs.<task>``: a Linear, or a 1x1 Conv2d). The output layer is affine and the weights sum to
  one, so this equals every expert ending in a task-specific last layer (the product of the expert's and
  the task's), applied to that expert's output and mixed: the experts' computation is shared, the
  output layers are not. In top-p mode a pool expert runs once on the images that any task of the side
  selected it for (the union of the tasks' selections); a task's weight is zero on the images it did
  not select, so those add nothing to its output.
- ``shared_experts=S`` (default 0: none, and no parameter of the model changes name): S always-on
  experts beside the routed ones, in the same unit that owns the routed experts (per task, or per side's
  pool: ``shared_experts.<task or pool>``), as DeepSeekMoE's shared experts and PLE/CGC's shared ones.
  They run on every image in dense and top-p mode and are not gated. Their contribution is the mean of
  their outputs (for S = 1 that is the expert's output itself), added to the routed mixture: the mean
  keeps the always-on part on the scale of one expert whatever S is, as the routed mixture (a convex
  combination) is, so changing S does not rescale the task's logits at initialisation.
"""
import math

from torch import nn

from codebase.networks.experts import ExpertBank
from codebase.networks.routing import Routing

POOLS = ("task", "shared")


def pool_key(side):
    """The key of one side's shared pool in the model's ``experts`` dict: "pool_grading"."""
    return f"pool_{side}"


def build_layout(tasks, make_expert, feature_width, num_experts, shared_experts=0, expert_pool="task", prior=0.01):
    """(experts, shared, task_outputs, owner) for ``tasks`` (codebase.tasks.Task).

    make_expert(side, outputs) -> one expert module; feature_width: {side: width of a pool expert's
    feature}. experts: ModuleDict {owner: ExpertBank}; shared: ModuleDict {owner: ExpertBank of the
    always-on experts} or None; task_outputs: ModuleDict {task: output layer} (shared pool) or None;
    owner: {task: key of the unit holding its experts}.
    """
    if expert_pool not in POOLS:
        raise ValueError(f"expert_pool must be one of {POOLS}, got {expert_pool!r}")
    if shared_experts < 0:
        raise ValueError(f"shared_experts must be at least 0, got {shared_experts}")
    pooled = expert_pool == "shared"
    owner = {task.name: pool_key(task.side) if pooled else task.name for task in tasks}
    units = {}  # owner -> (side, outputs of its experts)
    for task in tasks:
        units.setdefault(owner[task.name], (task.side, feature_width[task.side] if pooled else task.outputs))
    experts = nn.ModuleDict({key: ExpertBank([make_expert(side, out) for _ in range(num_experts)])
                             for key, (side, out) in units.items()})
    shared = None
    if shared_experts:
        shared = nn.ModuleDict({key: ExpertBank([make_expert(side, out) for _ in range(shared_experts)])
                                for key, (side, out) in units.items()})
    task_outputs = None
    if pooled:
        task_outputs = nn.ModuleDict({task.name: _output_layer(task, feature_width[task.side], prior)
                                      for task in tasks})
        for bank in [*experts.values(), *(shared.values() if shared is not None else [])]:
            for expert in bank.experts:  # a feature, not a logit: no lesion prior in its bias
                last = getattr(expert, "classifier", None)
                if last is not None:
                    nn.init.zeros_(last.bias)
    return experts, shared, task_outputs, owner


def _output_layer(task, width, prior):
    if task.side == "grading":
        return nn.Linear(width, task.outputs)
    layer = nn.Conv2d(width, task.outputs, 1)
    nn.init.constant_(layer.bias, math.log(prior / (1 - prior)))  # as DeepLabDecoder's classifier
    return layer


def dispatch_routings(routings, owner):
    """The routings the dispatch plan is made for: {owner: Routing}. A task owning its experts plans
    with its own routing; a pool plans with the union of its tasks' selections (dense only when every
    task's routing is)."""
    members = {}
    for task, routing in routings.items():
        members.setdefault(owner[task], []).append(routing)
    result = {}
    for key, group in members.items():
        if len(group) == 1:
            result[key] = group[0]
            continue
        mask = group[0].mask
        for routing in group[1:]:
            mask = mask | routing.mask
        weights = mask.float()
        result[key] = Routing(weights, weights, mask, dense=all(r.dense for r in group))
    return result


def combine(tasks, inputs, mixtures, plan, experts, shared, task_outputs, owner):
    """{task: output} for ``tasks``: the routed mixture (each expert run once per its plan; mixtures:
    {task: [B, E] weights, or [B, E, h, w] per pixel with region routing}), plus the mean of the
    always-on experts, through the task's output layer where it has one."""
    groups = {}
    for task in tasks:
        groups.setdefault(owner[task], []).append(task)
    result = {}
    for key, members in groups.items():
        mixed = experts[key].mix_many(inputs, [mixtures[t] for t in members], plan[key])
        always = shared[key].run_all(inputs).mean(dim=1) if shared is not None else None
        for task, out in zip(members, mixed):
            if always is not None:
                out = out + always
            result[task] = task_outputs[task](out) if task_outputs is not None else out
    return result
