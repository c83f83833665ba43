import pytest
import torch

from codebase.training.weighting import make_weighting
from tests.training.weighting.toy import TASKS, losses_of


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
