"""Sparse upcycling (Komatsuzaki et al., ICLR 2023): a multi-task MoE model that starts from a trained run.

``model.init_from`` names a saved multi-task run folder (saved/<name>/). The new model takes the
source's backbone and ASPP exactly, and every routed and always-on expert of each task starts as a
copy of the source's expert 0 of that task (a 1-expert run is the intended source: its one expert is
the dense block being upcycled; a source with several experts gives its expert 0, which the log line
says) plus Gaussian noise with sd = 0.01 x the standard deviation of each weight tensor (over its
entries; buffers such as BatchNorm statistics, and tensors with no spread, are copied exactly), drawn
from a generator seeded by the run's seed, so that copies of one expert can diverge. The gates start
fresh (the source's single-expert gates have nothing to route). The weights read are the source's
best.pth where it has one, else model.pth (the last epoch's).

The source must describe the same model apart from the experts: the settings in ``MUST_MATCH`` are
compared and the first that differs is named in a one-line ConfigError. Upcycling into a shared
expert pool is refused: a pool expert computes a feature, not one task's logits, so no source expert
is a copy of it.
"""
import json
from pathlib import Path

import torch

from codebase.config import ConfigError
from codebase.training.run_folder import BEST_MODEL_FILE, CONFIG_FILE, MODEL_FILE

NOISE_SCALE = 0.01  # sd of the perturbation, relative to each tensor's standard deviation
MUST_MATCH = ("kind", "model.backbone", "model.task_specs", "model.aspp_channels", "model.decoder_channels",
              "model.head_hidden", "model.expert_pool")
_DEFAULTS = {"kind": "multitask", "model.expert_pool": "task"}  # what a run written before these settings means


def _get(config, key):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _DEFAULTS.get(key)
        node = node[part]
    return node


def source_config(config):
    """The source run's config.json for ``config``'s model.init_from; ConfigError naming the setting
    when the folder is not a multi-task run or its model differs from this one's (MUST_MATCH)."""
    folder = Path(config["model"]["init_from"])
    where = f"model.init_from={str(folder)!r}"
    if config["model"].get("expert_pool", "task") != "task":
        raise ConfigError(f"{where}: upcycling needs model.expert_pool='task' (a shared pool's experts compute a "
                          "feature, not a copy of one task's expert)")
    path = folder / CONFIG_FILE
    if not path.is_file() or not ((folder / MODEL_FILE).is_file() or (folder / BEST_MODEL_FILE).is_file()):
        raise ConfigError(f"{where}: expected a saved multi-task run folder with {CONFIG_FILE} and {MODEL_FILE}")
    try:
        source = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{where}: {path} is not valid JSON ({error})") from None
    for key in MUST_MATCH:
        if _get(source, key) != _get(config, key):
            raise ConfigError(f"{where}: the source run's {key}={_get(source, key)!r} differs from this run's "
                              f"{_get(config, key)!r}; upcycling needs the same model apart from the experts")
    return source


def _perturbed(tensor, generator):
    spread = tensor.float().std(correction=0) if tensor.numel() > 1 else torch.zeros(())
    if spread == 0:
        return tensor.clone()
    noise = torch.randn(tensor.shape, generator=generator) * (NOISE_SCALE * spread)
    return (tensor.float() + noise).to(tensor.dtype)


def upcycle(model, config):
    """Load model.init_from's backbone and ASPP into ``model`` and copy its expert 0 of each task into
    every routed and shared expert of that task, perturbed (module docstring). Returns a log line."""
    source = source_config(config)
    folder = Path(config["model"]["init_from"])
    path = folder / BEST_MODEL_FILE if (folder / BEST_MODEL_FILE).is_file() else folder / MODEL_FILE
    weights = torch.load(path, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(int(config["seed"]))
    parameters = {name for name, _ in model.named_parameters()}
    state = model.state_dict()
    copied = {}
    for name in state:
        unit, _, rest = name.partition(".")
        if unit in ("backbone", "aspp"):
            origin, noisy = name, False
        elif unit in ("experts", "shared_experts"):
            task, _, inner = rest.partition(".")     # <task>.experts.<i>.<rest of the name>
            _, _, tail = inner.partition(".")[2].partition(".")
            origin, noisy = f"experts.{task}.experts.0.{tail}", name in parameters
        else:
            continue  # gates: fresh
        if origin not in weights or weights[origin].shape != state[name].shape:
            raise ConfigError(f"model.init_from={str(folder)!r}: {path.name} has no {origin} of shape "
                              f"{tuple(state[name].shape)} for {name}")
        value = weights[origin]
        copied[name] = _perturbed(value, generator) if noisy and value.is_floating_point() else value.clone()
    model.load_state_dict(copied, strict=False)
    experts = _get(source, "model.num_experts")
    return (f"upcycled from {path}: backbone and ASPP copied, every expert of each task a copy of the source's "
            f"expert 0 (of {experts}) plus Gaussian noise (sd {NOISE_SCALE} x each tensor's std, seed "
            f"{config['seed']}); gates start fresh")
