"""Configuration: a script's CONFIG dict, the command line folded into it, and validation.

Order: defaults every run has < the script's CONFIG < demo overrides (with --demo) <
--data-root, --device, --run-name, --resume/--no-resume < --set KEY=VALUE (left to right).
The resolved config is one plain, JSON-serialisable dict. `require` checks one setting and
raises ConfigError naming its key and what was expected.
"""
import argparse
import copy
import difflib
import json
import math
from dataclasses import dataclass
from numbers import Real
from typing import Callable, Iterable

import numpy as np
import torch

from codebase.earlier_config import RENAMED_KEYS
from codebase.errors import ProjectError

# Keys every run has; a script's CONFIG may override any of them.
RUN_DEFAULTS = {
    "seed": 0,
    "device": "auto",
    "deterministic": False,  # True: cudnn picks deterministic kernels instead of benchmarking the fastest
    "run": {"name": "run", "save_dir": "saved", "resume": None, "demo": False, "plots": True,
            "tensorboard": True},  # TensorBoard event files in saved/<name>/tensorboard/
}

# What a setting does when a run resumes (--resume), declared once beside the settings: a setting
# that MAY_CHANGE is applied to the resumed run for real; one that FIXES_THE_RUN (model, data,
# splits, sizes, seed, tasks, loss) is compared with the checkpoint's value and a change is
# refused before anything is loaded. A table maps keys or section prefixes to one of the two; the
# longest matching entry decides (`resume_rule`), and a key no entry covers fixes the run.
MAY_CHANGE = "may change on resume"
FIXES_THE_RUN = "fixes the run"
RUN_RESUME_RULES = {
    "seed": FIXES_THE_RUN,
    "device": MAY_CHANGE,
    "deterministic": MAY_CHANGE,
    "run": MAY_CHANGE,  # where the run folder is and what it writes besides the weights (plots, TensorBoard)
}


class ConfigError(ProjectError, ValueError):
    """A configuration value or command-line flag is wrong; the message names the key."""


def is_number(value) -> bool:
    """A real number that is not a bool (config floats, history values)."""
    return isinstance(value, Real) and not isinstance(value, bool)

def parse_cli(config: dict, argv: list[str] | None = None, demo_overrides: dict | None = None,
              description: str = "", validate: Callable[[dict], None] | None = None) -> dict:
    """The script's CONFIG with the command line applied, as a new plain dict.

    Order: RUN_DEFAULTS < CONFIG < demo overrides (with --demo) < --data-root, --device,
    --run-name, --resume/--no-resume < --set (left to right). `validate(config)` runs last and
    may raise ConfigError (see `require`).
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, nested keys with dots "
                             "(e.g. --set optim.lr=3e-4 --set train.epochs=30); repeatable")
    parser.add_argument("--data-root", help="dataset folder (data.root)")
    parser.add_argument("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--run-name", help="run folder name under run.save_dir (run.name)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                        help="resume from the run folder's checkpoint (default: resume when one "
                             "exists); --no-resume starts a new folder <name>_2, ... and never "
                             "deletes an earlier run")
    parser.add_argument("--demo", action="store_true",
                        help="small built-in experiment on synthetic data (the script's demo settings)")
    args = parser.parse_args(argv)

    resolved = with_defaults(config)
    if args.demo:
        for key, value in (demo_overrides or {}).items():
            set_value(resolved, key, value)
        resolved["run"]["demo"] = True
    flags = {"data.root": args.data_root, "device": args.device, "run.name": args.run_name,
             "run.resume": args.resume}
    for key, value in flags.items():
        if value is not None:
            set_value(resolved, key, value)
    resolved = apply_overrides(resolved, args.set)
    if validate is not None:
        validate(resolved)
    return resolved


def with_defaults(config: dict) -> dict:
    """A deep, JSON-plain copy of `config` with RUN_DEFAULTS' keys filled in where absent."""
    merged = copy.deepcopy(RUN_DEFAULTS)
    _merge_into(merged, _config_data(config, "config"))
    return merged


def apply_overrides(config: dict, assignments: Iterable[str]) -> dict:
    """A copy of `config` with each "a.b=value" applied, the text parsed to the default's type."""
    config = copy.deepcopy(config)
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set optim.lr=0.001")
        parent, leaf = _locate(config, key)
        parent[leaf] = parse_value(key, text, parent[leaf])
    return config


def set_value(config: dict, key: str, value) -> None:
    """Set an existing dotted key to an already-typed value, checked against the default's type."""
    parent, leaf = _locate(config, key)
    parent[leaf] = _coerce(key, _config_data(value, key), parent[leaf])


def get_value(config: dict, key: str):
    parent, leaf = _locate(config, key)
    return parent[leaf]


def require(config: dict, key: str, check, expected: str | None = None) -> None:
    """Raise ConfigError unless the value at `key` passes `check`.

    `check` is a predicate (`lambda p: 0 < p <= 1`, with `expected="a number in (0, 1]"`) or a
    collection of allowed values (`("resnet18", "resnet50")`).
    """
    value = get_value(config, key)
    if callable(check):
        try:
            passed = bool(check(value))
        except TypeError:
            passed = False
    else:
        passed = value in check
        expected = expected or "one of " + ", ".join(repr(choice) for choice in check)
    if not passed:
        raise ConfigError(f"{key}={value!r}: expected {expected or 'a valid value'}")


@dataclass(frozen=True)
class Rule:
    """What a setting must be: ``check(value)`` is true, described to the user as ``expected``."""

    check: Callable[[object], bool]
    expected: str


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Rule:
    """A finite real number (not a bool, not NaN or infinite) within [low, high] (open ends optional)."""
    def check(value):
        if not is_number(value) or not math.isfinite(value):
            return False
        above = low is None or (value > low if low_open else value >= low)
        below = high is None or (value < high if high_open else value <= high)
        return above and below
    if low is not None and high is not None:
        text = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        text = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        text = "a finite number"
    return Rule(check, text)


def integer(minimum: int | None = None, maximum: int | None = None) -> Rule:
    """A whole number (not a bool) within [minimum, maximum]."""
    def check(value):
        return (isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)
                and (maximum is None or value <= maximum))
    bounds = [f">= {minimum}"] * (minimum is not None) + [f"<= {maximum}"] * (maximum is not None)
    return Rule(check, "an integer" + (" " + " and ".join(bounds) if bounds else ""))


def choice(*values) -> Rule:
    return Rule(lambda value: value in values, "one of " + ", ".join(map(repr, values)))


# The largest side of an image size setting: IDRiD's photographs (2848 x 4288) fit, and one image
# at it is a bounded allocation (4608^2 x 3 bytes = 64 MB decoded).
MAX_IMAGE_SIDE = 4608


def size_hw(minimum: int = 1, maximum: int = MAX_IMAGE_SIDE) -> Rule:
    """[height, width], whole numbers in [minimum, maximum]."""
    return Rule(lambda value: (isinstance(value, list) and len(value) == 2
                               and all(integer(minimum, maximum).check(n) for n in value)),
                f"[height, width], integers >= {minimum} and <= {maximum}")


def optional(rule: Rule) -> Rule:
    return Rule(lambda value: value is None or rule.check(value), f"None or {rule.expected}")


BOOLEAN = Rule(lambda value: isinstance(value, bool), "true or false")
TEXT = Rule(lambda value: isinstance(value, str) and value.strip() != "", "a non-empty text")


def resume_rule(key: str, rules: dict) -> str | None:
    """MAY_CHANGE or FIXES_THE_RUN for `key` by the longest entry of `rules` that covers it, or None."""
    covering = [entry for entry in rules if key == entry or key.startswith(entry + ".")]
    return rules[max(covering, key=len)] if covering else None


def resume_changes(old: dict, new: dict, rules: dict) -> tuple[list[str], list[str]]:
    """(changes that fix the run, changes that may change), each "key: old (checkpoint) -> new (now)",
    between a checkpoint's config `old` and the config asked for now (run.resume is the request
    itself; a key one side lacks counts as a change of that key; a mapping compared whole unless
    both sides hold entries)."""
    refused, applied = [], []
    for key, before, now in _differences(old, new):
        if key != "run.resume":
            line = f"{key}: {before!r} (checkpoint) -> {now!r} (now)"
            (applied if resume_rule(key, rules) == MAY_CHANGE else refused).append(line)
    return refused, applied


def _differences(old: dict, new: dict, prefix: str = ""):
    absent = "(absent)"
    for name in sorted(old.keys() | new.keys()):
        before, now = old.get(name, absent), new.get(name, absent)
        if isinstance(before, dict) and isinstance(now, dict) and before and now:
            yield from _differences(before, now, f"{prefix}{name}.")
        elif before != now:
            yield f"{prefix}{name}", before, now


def check_settings(config: dict, rules: dict) -> None:
    """ConfigError naming the first setting that breaks its rule; every rule's key must exist."""
    for key, rule in rules.items():
        require(config, key, rule.check, rule.expected)


def uncovered_settings(config: dict, rules: dict) -> list[str]:
    """Settings of ``config`` that no rule covers (by their own key or a parent's)."""
    return [key for key in flatten(config)
            if not any(key == rule_key or key.startswith(rule_key + ".") for rule_key in rules)]


def parse_value(key: str, text: str, default):
    """Parse command-line `text` to the type of `default` (None defaults take JSON, else text)."""
    try:
        if default is None:
            return _json_or_text(text)
        if isinstance(default, (list, tuple)):
            return _parse_list(key, text, default)
        if isinstance(default, dict):
            value = json.loads(text)
            if isinstance(value, dict):
                return value
            raise ValueError(text)
        return _parse_scalar(text, default)
    except ValueError:
        raise ConfigError(f"{key}={text!r}: expected {_type_name(default)}") from None


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _parse_scalar(text: str, default):
    if isinstance(default, bool):
        word = text.strip().lower()
        if word in _TRUE + _FALSE:
            return word in _TRUE
        raise ValueError(text)
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def _parse_list(key: str, text: str, default) -> list:
    text = text.strip()
    if text.startswith("["):
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError(text)
    else:
        items = [part.strip() for part in text.split(",")] if text else []
    if not default:
        return items
    return [_parse_scalar(item, default[0]) if isinstance(item, str) else _coerce(key, item, default[0])
            for item in items]


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _coerce(key: str, value, default):
    """`value` if it fits the type of `default` (ints widen to float), else ConfigError."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        fits = isinstance(value, bool)
    elif isinstance(default, int):
        fits = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        fits = is_number(value)
    elif isinstance(default, (list, tuple)):
        fits = isinstance(value, list)
    else:
        fits = isinstance(value, type(default))
    if not fits:
        raise ConfigError(f"{key}={value!r}: expected {_type_name(default)}")
    if isinstance(default, float):
        return float(value)
    if isinstance(default, (list, tuple)) and default:
        return [_coerce(key, item, default[0]) for item in value]
    return value


_SCALAR_NAMES = {bool: ("a boolean (true/false, yes/no, 1/0)", "booleans"), int: ("an integer", "integers"),
                 float: ("a number", "numbers"), str: ("a string", "strings")}


def _type_name(default) -> str:
    if isinstance(default, (list, tuple)):
        element = f" of {_SCALAR_NAMES.get(type(default[0]), ('', 'values'))[1]}" if default else ""
        return f"a list{element} (JSON like [1, 2] or comma-separated like 1,2)"
    if isinstance(default, dict):
        return 'a JSON object like {"key": 1}'
    return _SCALAR_NAMES.get(type(default), (type(default).__name__,))[0]


def _locate(config: dict, key: str) -> tuple[dict, str]:
    """(section dict, leaf name) of an existing dotted key, or ConfigError with suggestions."""
    node = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(_unknown_key_message(config, key, ".".join(parts[:depth])))
        if depth < len(parts) - 1:
            node = node[part]
    return node, parts[-1]


def _unknown_key_message(config: dict, key: str, known_prefix: str) -> str:
    renamed = next((old for old in RENAMED_KEYS if key == old or key.startswith(old + ".")), None)
    if renamed is not None:
        new, convert, example = RENAMED_KEYS[renamed]
        return (f"config key {key!r} was renamed: set {new} instead, {{task: weight}} for the tasks to weigh "
                f"(e.g. --set '{new}={json.dumps(convert(example))}')")
    keys = list(flatten(config))
    leaf = key.rsplit(".", 1)[-1]

    def similarity(candidate: str) -> float:
        whole = difflib.SequenceMatcher(None, key, candidate).ratio()
        last = difflib.SequenceMatcher(None, leaf, candidate.rsplit(".", 1)[-1]).ratio()
        return max(whole, last)

    close = sorted((k for k in keys if similarity(k) >= 0.6), key=similarity, reverse=True)[:3]
    message = f"unknown config key {key!r}"
    if close:
        return message + "; did you mean " + " or ".join(repr(k) for k in close) + "?"
    section = get_value(config, known_prefix) if known_prefix else config
    if isinstance(section, dict):
        where = f"under {known_prefix!r}" if known_prefix else "at the top level"
        return message + f"; keys {where}: " + ", ".join(sorted(section))
    return message + f"; {known_prefix!r} is a value, not a section"


def flatten(config: dict, prefix: str = "") -> dict:
    """{"a.b": value} for every leaf (an empty dict is a leaf)."""
    flat = {}
    for name, value in config.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def _merge_into(target: dict, source: dict) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = value


def _config_data(value, key: str):
    try:
        return as_json_data(value, key)
    except TypeError as error:
        raise ConfigError(f"{error}; config values must be numbers, strings, booleans, None, "
                          "lists or dicts") from None


def as_json_data(value, key: str):
    """`value` as JSON data: tuples become lists, tensors and numpy values numbers or lists."""
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist() if value.ndim else value.item()
    if isinstance(value, dict):
        return {str(name): as_json_data(item, f"{key}.{name}") for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json_data(item, key) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{key} is a {type(value).__name__}")


