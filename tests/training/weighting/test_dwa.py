import math

import pytest
import torch

from codebase.training.weighting import make_weighting


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
