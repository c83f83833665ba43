"""torchjd's methods train the real multi-task model as the package's own methods do
(test_weighting_multitask.py), through the one adapter they all share
(codebase/training/weighting/torchjd_adapter.py): MGDA here. The stateful GradVac, the other
representative, runs the real model under two-process DDP (test_weighting_ddp.py). Every torchjd method
trains, resumes and runs on the device in tests/training/weighting/test_every_method.py; fitting the
real model with each of the seven took five minutes of the suite for one code path. A file of its own, so the suite's two workers share these trainings."""
import pytest

from codebase.training.weighting import installed_weightings
from tests.training.test_weighting_multitask import TORCHJD_REPRESENTATIVES, batches, fit_and_check  # noqa: F401 (batches: the fixture)

pytestmark = pytest.mark.slow  # trains a model


@pytest.mark.parametrize("method", [method for method in TORCHJD_REPRESENTATIVES[:1] if method in installed_weightings()])
def test_torchjd_weightings_fit_the_multitask_model_on_a_fixed_batch(method, batches):  # noqa: F811
    fit_and_check(method, "off", batches)
