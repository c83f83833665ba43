"""Nash-MTL needs the optional cvxpy and ecos: without them choosing it is an error that says how to
install them; with them, a hand-made case and an exact resume."""
import importlib.util
import io

import pytest
import torch

from codebase.training.weighting import install_problem, installed_weightings, make_weighting
from tests.training.weighting.toy import TASKS, gram_of

INSTALLED = all(importlib.util.find_spec(package) for package in ("cvxpy", "ecos"))
needs_cvxpy = pytest.mark.skipif(not INSTALLED, reason="needs the optional cvxpy and ecos (torchjd[nash-mtl])")


@pytest.mark.skipif(INSTALLED, reason="cvxpy and ecos are installed here")
def test_without_cvxpy_nash_mtl_says_how_to_install_it():
    with pytest.raises(ValueError, match=r"loss.weighting='nash_mtl': nash_mtl needs cvxpy, ecos, not installed: "
                                         r"pip install \"torchjd\[nash-mtl\]\""):
        make_weighting("nash_mtl", TASKS, {})
    assert "nash_mtl" not in installed_weightings() and "pip install" in install_problem("nash_mtl")


@needs_cvxpy
def test_nash_mtl_by_hand():
    # g1 = (2, 0), g2 = (0, 1): the bargaining solution alpha_t (G G^T alpha)_t = 1 is alpha = (1/2, 1);
    # the combined gradient's squared norm alpha^T G G^T alpha is then T = 2, clipped to max_norm = 1.
    _, gram = gram_of([2.0, 0.0], [0.0, 1.0])
    weighting = make_weighting("nash_mtl", TASKS, {"nash_mtl_max_norm": 0.0})
    weights = weighting.coefficients([0, 1], gram, None)
    torch.testing.assert_close(weights, torch.tensor([0.5, 1.0], dtype=torch.float64), rtol=1e-6, atol=0)
    clipped = make_weighting("nash_mtl", TASKS, {}).coefficients([0, 1], gram, None)  # max_norm 1
    assert float(clipped @ gram @ clipped) == pytest.approx(1.0, rel=1e-6)


@needs_cvxpy
def test_nash_mtl_resumes_with_its_previous_solution():
    generator = torch.Generator().manual_seed(0)
    grams = [g @ g.T for g in torch.randn(6, 3, 5, generator=generator, dtype=torch.float64)]
    tasks = ("a", "b", "c")
    weighting = make_weighting("nash_mtl", tasks, {})
    for gram in grams[:3]:
        weighting.coefficients([0, 1, 2], gram, None)
    buffer = io.BytesIO()
    torch.save(weighting.state_dict(), buffer)  # as a checkpoint holds it, loaded with weights_only=True
    continued = [weighting.coefficients([0, 1, 2], gram, None) for gram in grams[3:]]
    resumed = make_weighting("nash_mtl", tasks, {})
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    for expected, gram in zip(continued, grams[3:]):
        torch.testing.assert_close(resumed.coefficients([0, 1, 2], gram, None), expected, rtol=1e-6, atol=1e-9)
