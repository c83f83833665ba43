"""Each of torchjd's methods (through codebase/training/weighting/torchjd_adapter.py) trains the real
multi-task model as the package's own methods do (test_weighting_multitask.py): a file of its own, so
the suite's two workers share these trainings."""
import pytest

from codebase.training.weighting import installed_weightings
from tests.training.test_weighting_multitask import batches, fit_and_check, written_here  # noqa: F401 (batches: the fixture)

pytestmark = pytest.mark.slow  # trains a model


@pytest.mark.parametrize("method", [method for method in sorted(installed_weightings()) if not written_here(method)])
def test_torchjd_weightings_fit_the_multitask_model_on_a_fixed_batch(method, batches):  # noqa: F811
    fit_and_check(method, "off", batches)
