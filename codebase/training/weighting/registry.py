"""The registry of loss weightings: one entry per method, each declaring its settings once.

A method's settings are flat keys of a run's ``loss`` section, ``loss.<prefix><setting>`` (e.g.
``loss.dwa_temperature``; fixed's ``task_weights`` has no prefix). The train script's CONFIG takes
their defaults from `default_settings` and its rules from `setting_rules`, so a method registered
here is configurable with ``--set`` with no other edit.
"""
import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from codebase.config import FIXES_THE_RUN, Rule

WEIGHTINGS: dict[str, type] = {}  # name -> Weighting subclass, in the order they were registered


@dataclass(frozen=True)
class Setting:
    """One setting of a weighting: its default, type (float, int, bool, str or dict) and allowed range."""

    default: object
    kind: type
    check: Callable[[object], bool] | None = None
    expected: str = ""


def register(name: str):
    """Class decorator: add a Weighting subclass to WEIGHTINGS under ``name``."""
    def add(cls):
        if name in WEIGHTINGS:
            raise ValueError(f"loss weighting {name!r} is already registered ({WEIGHTINGS[name].__name__})")
        cls.name = name
        WEIGHTINGS[name] = cls
        return cls
    return add


def setting_key(cls: type, setting: str) -> str:
    """The config key (inside ``loss``) of a weighting's setting, e.g. "dwa_temperature"."""
    return f"{cls.setting_prefix}{setting}"


def default_settings() -> dict:
    """Every registered method's settings with their defaults, as flat ``loss`` config keys."""
    return {setting_key(cls, name): _copy(setting.default)
            for cls in WEIGHTINGS.values() for name, setting in cls.settings.items()}


def setting_rules() -> dict:
    """A config rule (codebase.config.Rule) for every method's setting, keyed ``loss.<key>``."""
    def rule(key, setting):
        def check(value):
            try:
                _validated(key, value, setting)
            except ValueError:
                return False
            return True
        expected = {float: "a finite number", int: "an integer", bool: "true or false", str: "a text",
                    dict: "a mapping"}[setting.kind]
        return Rule(check, f"{expected}{' ' + setting.expected if setting.expected else ''}")
    return {f"loss.{setting_key(cls, name)}": rule(f"loss.{setting_key(cls, name)}", setting)
            for cls in WEIGHTINGS.values() for name, setting in cls.settings.items()}


def resume_rules() -> dict:
    """Every method's setting fixes the run on --resume (it changes the loss the weights were trained
    on, and the weighting's checkpointed state)."""
    return {f"loss.{setting_key(cls, name)}": FIXES_THE_RUN for cls in WEIGHTINGS.values() for name in cls.settings}


def make_weighting(name: str, tasks: Sequence[str], settings: Mapping | None = None):
    """The weighting ``name`` for ``tasks``, configured from flat ``settings`` (keys as in ``loss``).

    Keys of other registered methods are accepted and ignored (a config lists every method's
    defaults); any other key, a value of the wrong type or out of range raises ValueError.
    """
    if name not in WEIGHTINGS:
        raise ValueError(f"loss.weighting must be one of {', '.join(sorted(WEIGHTINGS))}, got {name!r}")
    problem = install_problem(name)
    if problem:
        raise ValueError(f"loss.weighting={name!r}: {problem}")
    tasks = list(tasks)
    if not tasks or len(set(tasks)) != len(tasks) or not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"loss weighting needs a non-empty list of distinct task names, got {tasks}")
    cls = WEIGHTINGS[name]
    known_elsewhere = set(default_settings())
    own = {setting_key(cls, key): key for key in cls.settings}
    unknown = sorted(key for key in (settings or {}) if key not in own and key not in known_elsewhere)
    if unknown:
        raise ValueError(f"unknown loss weighting settings {', '.join('loss.' + k for k in unknown)}; "
                         f"{name} takes {', '.join('loss.' + k for k in own) or 'none'}")
    values = {}
    for key, attribute in own.items():
        if key in (settings or {}):
            values[attribute] = _validated(f"loss.{key}", settings[key], cls.settings[attribute])
    return cls(tasks, **values)


def weighting_from_config(loss_config: Mapping, tasks: Sequence[str]):
    """The weighting a run's ``loss`` section names (``loss.weighting``), with its settings from that
    section (the section's other keys, the loss terms', are not the weighting's)."""
    known = default_settings()
    return make_weighting(loss_config["weighting"], tasks,
                          {key: value for key, value in loss_config.items() if key in known})


def missing_packages(name: str) -> list[str]:
    """The optional packages (import names) the method ``name`` needs and this environment lacks."""
    return [package for package in WEIGHTINGS[name].requires if importlib.util.find_spec(package) is None]


def install_problem(name: str) -> str | None:
    """Why the method ``name`` cannot run here (its optional packages are missing, and how to install
    them), or None when it can."""
    missing = missing_packages(name)
    if not missing:
        return None
    return f"{name} needs {', '.join(missing)}, not installed: {WEIGHTINGS[name].install}"


def installed_weightings() -> list[str]:
    """The registered methods whose optional packages are installed, in the registry's order."""
    return [name for name in WEIGHTINGS if not missing_packages(name)]


def _copy(value):
    return dict(value) if isinstance(value, dict) else value


def _validated(key: str, value, setting: Setting):
    kind = setting.kind
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        value = int(value)
    elif kind is bool and isinstance(value, bool):
        pass
    elif kind is str and isinstance(value, str):
        pass
    elif kind is dict and (value is None or isinstance(value, Mapping)):
        value = dict(value or {})
    else:
        raise ValueError(f"{key} must be a {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{key} must be finite, got {value!r}")
    if setting.check is not None and not setting.check(value):
        raise ValueError(f"{key} must be {setting.expected}, got {value!r}")
    return value


def positive(value) -> bool:
    return value > 0


def non_negative(value) -> bool:
    return value >= 0
