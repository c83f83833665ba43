import torch

from codebase.training.weighting import make_weighting
from tests.training.weighting.toy import TASKS, losses_of


def test_fixed_weights_and_subsets():
    weighting = make_weighting("fixed", TASKS, {"task_weights": {"b": 3}})
    assert float(weighting.combine(losses_of(1.0, 2.0))) == 7.0
    assert weighting.task_weights() == {"a": 1.0, "b": 3.0}
    assert float(weighting.combine({"b": torch.tensor(2.0)})) == 6.0
    assert weighting.task_weights() == {"a": 0.0, "b": 3.0}
