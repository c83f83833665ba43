import math

import pytest
import torch

from codebase.training.weighting import make_weighting
from tests.training.weighting.toy import TASKS, losses_of


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
