"""The Mixture-of-Experts multi-task model: one backbone, per-task gates and experts.

Tasks come only from ``task_specs`` (name -> number of outputs), parsed by codebase/tasks.py. A
task on the grading side gets pooled classification experts; one on the segmentation side
gets DeepLabV3+ decoder experts fed by the shared ASPP. Adding a task is one entry in the dict.

Routing (see codebase/networks/routing.py): in dense mode every expert runs on every image and outputs are
mixed by the routing weights; in top-p mode each image runs only the experts it selected, each
expert runs only on the images that selected it, and an expert nobody selected does not run.
``shared_experts`` adds always-on experts, ``expert_pool="shared"`` gives each side one pool of experts
that its tasks' gates choose from (codebase/networks/expert_layout.py). What the gates read, and region
routing for the segmentation tasks (experts chosen per cell of a coarse grid): codebase/networks/regions.py.
"""
import torch
import torch.nn.functional as F
from torch import nn

from codebase.networks.backbones import make_backbone
from codebase.networks.expert_layout import build_layout, combine, dispatch_routings
from codebase.networks.layers import ASPP, ClassificationHead, DeepLabDecoder, Gate
from codebase.networks.regions import GRANULARITIES, gate_features, gate_input_channels, pixel_weights
from codebase.networks.routing import dispatch_plan, route, update_selection_bias
from codebase.tasks import SIDES as TASK_SIDES
from codebase.tasks import on_side, parse_tasks

SIDES = ("all",) + TASK_SIDES


class MultiTaskModel(nn.Module):
    """Shared ResNet (output stride 16) + one ASPP + per task a gate and ``num_experts`` experts."""

    def __init__(self, task_specs, backbone="resnet50", num_experts=3, pretrained="none", top_p=0.8,
                 aspp_channels=256, decoder_channels=256, head_hidden=256, gate_hidden=128, gate_noise=False,
                 gate_detach=False, shared_experts=0, expert_pool="task", gate_input="high", granularity="image",
                 region_grid=(4, 6), router="linear"):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if granularity == "region" and expert_pool == "shared":  # a pool's dispatch unites its tasks' images
            raise ValueError("granularity 'region' needs expert_pool 'task': a shared pool routes whole images")
        if num_experts < 1:
            raise ValueError(f"num_experts must be at least 1, got {num_experts}")
        self.tasks = parse_tasks(task_specs)
        self.task_specs = {task.name: task.outputs for task in self.tasks}
        self.grading_tasks = [task.name for task in on_side(self.tasks, "grading")]
        self.segmentation_tasks = [task.name for task in on_side(self.tasks, "segmentation")]
        self.num_experts = num_experts
        self.top_p = top_p
        self.gate_detach = gate_detach  # the gates read the pooled features without sending gradients back
        self.gate_input = gate_input
        self.region_grid = tuple(region_grid)
        self.region_tasks = self.segmentation_tasks if granularity == "region" else []  # grading: per image

        self.backbone = make_backbone(backbone, 16, pretrained)
        high, low = self.backbone.high_level_channels, self.backbone.low_level_channels
        self.aspp = ASPP(high, aspp_channels, 16, separable=True) if self.segmentation_tasks else None
        width = gate_input_channels(low, high, gate_input)
        self.gates = nn.ModuleDict({task: Gate(width, num_experts, gate_hidden, gate_noise, router)
                                    for task in self.task_specs})

        def make_expert(side, outputs):
            if side == "grading":
                return ClassificationHead(high, outputs, head_hidden, conv=True)
            return DeepLabDecoder(low, outputs, aspp_channels, channels=decoder_channels, separable=True)

        # Routed experts per task or per side's pool, and any always-on shared experts
        # (codebase/networks/expert_layout.py); with the defaults only experts.<task>, as always.
        self.shared_count, self.expert_pool = shared_experts, expert_pool
        self.experts, shared, task_outputs, self.owner = build_layout(
            self.tasks, make_expert, {"grading": head_hidden, "segmentation": decoder_channels}, num_experts,
            shared_experts, expert_pool)
        self.shared_experts, self.task_outputs = shared, task_outputs  # None (unregistered) when unused

    def update_selection_biases(self, routings, rate, reduce=None):
        """Loss-free load balancing after an optimizer step: move each routed task's selection bias
        towards equal first-choice shares (rate per step; reduce sums counts over processes)."""
        for task, routing in routings.items():
            update_selection_bias(self.gates[task].selection_bias, routing, rate, reduce)

    def keep_skipped_experts_in_graph(self, keep=True):
        """Give experts no image selected a zero gradient instead of none.

        DistributedDataParallel expects every parameter to get a gradient in every step; this
        meets that for a sum over the skipped experts' weights, instead of DDP's
        find_unused_parameters graph traversal after every forward.
        """
        for bank in self.experts.values():
            bank.keep_skipped_in_graph = keep

    def forward(self, images, side="all", dense=False):
        """images [B, 3, H, W] -> {"logits": {task: ...}, "routing": {task: Routing}}.

        side: "all" tasks, or only the "grading" or "segmentation" ones (the other side's
        heads, and for classification the ASPP, are not run). Classification logits are
        [B, classes]; segmentation logits [B, outputs, H, W]. dense: every expert runs on every
        image (warm-up), instead of top-p routing (after warm-up, and at inference).
        """
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        tasks = [task.name for task in self.tasks if side == "all" or task.side == side]
        low_level, high_level = self.backbone(images)  # [B, Cl, H/4, W/4], [B, Ch, H/16, W/16]
        grids = {task: self.region_grid if task in self.region_tasks else None for task in tasks}
        inputs = {grid: gate_features(low_level, high_level, self.gate_input, grid)  # [B, C] or [B * cells, C]
                  for grid in set(grids.values())}
        if self.gate_detach:
            inputs = {grid: features.detach() for grid, features in inputs.items()}
        routings = {task: route(self.gates[task](inputs[grid]), self.top_p, self.gates[task].selection_bias, dense,
                                grid[0] * grid[1] if grid else 1)
                    for task, grid in grids.items()}
        plan = dispatch_plan(dispatch_routings(routings, self.owner))  # one host read for all tasks
        logits = self._classify(high_level, routings, plan)
        logits.update(self._segment(low_level, high_level, routings, plan, images.shape[-2:]))
        return {"logits": logits, "routing": routings}

    def forward_grading(self, images, dense=False):
        """Grading tasks only: {"logits": {task: [B, classes]}, "routing": {task: Routing}}."""
        return self(images, "grading", dense)

    def forward_segmentation(self, images, dense=False):
        """Segmentation tasks only: {"logits": {task: [B, outputs, H, W]}, "routing": {task: Routing}}."""
        return self(images, "segmentation", dense)

    def _classify(self, high_level, routings, plan):
        tasks = [t for t in self.grading_tasks if t in routings]
        return self._combine(tasks, (high_level,), routings, plan)

    def _combine(self, tasks, inputs, routings, plan, mixtures=None):
        """{task: output}; mixtures: {task: weights} where not the routing's own per-image mixture."""
        mixtures = {t: (mixtures or {}).get(t, routings[t].mixture) for t in tasks}
        return combine(tasks, inputs, mixtures, plan, self.experts, self.shared_experts, self.task_outputs, self.owner)

    def _segment(self, low_level, high_level, routings, plan, size):
        tasks = [t for t in self.segmentation_tasks if t in routings]
        if not tasks:
            return {}
        context = self.aspp(high_level)  # [B, 256, H/16, W/16]
        context = F.interpolate(context, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        outputs = self._combine(tasks, (context, low_level), routings, plan,
                                {t: self._mixture(routings[t], low_level) for t in tasks})
        stride4 = [outputs[t] for t in tasks]
        # One upsampling for all tasks: [B, sum(outputs), H/4, W/4] -> [B, sum(outputs), H, W].
        full = F.interpolate(torch.cat(stride4, dim=1), size=size, mode="bilinear", align_corners=False)
        return dict(zip(tasks, full.split([self.task_specs[t] for t in tasks], dim=1)))


    def _mixture(self, routing, low_level):
        """[B, E] per image, or with region routing per-pixel weights [B, E, H/4, W/4]."""
        if routing.cells == 1:
            return routing.mixture
        return pixel_weights(routing.mixture, self.region_grid, low_level.shape[-2:])


def build_model(config):
    """The multi-task model a run's config describes."""
    model = config["model"]
    return MultiTaskModel(model["task_specs"], model["backbone"], model["num_experts"], model["pretrained"],
                          top_p=config["routing"]["top_p"], aspp_channels=model["aspp_channels"],
                          decoder_channels=model["decoder_channels"], head_hidden=model["head_hidden"],
                          gate_noise=config["routing"].get("noise", False),
                          gate_detach=config["routing"].get("detach_gate_input", False),
                          shared_experts=model.get("shared_experts", 0), expert_pool=model.get("expert_pool", "task"),
                          **{key: config["routing"][key] for key in ROUTING_OPTIONS if key in config["routing"]})


ROUTING_OPTIONS = ("gate_input", "granularity", "region_grid", "router")  # absent in older runs: the defaults


def predict(model, images, side="all", dense=False):
    """The uniform prediction format: {"logits": {task: ...}, "routing": {task: Routing}}."""
    return model(images, side=side, dense=dense)
