"""scikit-learn's own estimator checks on :class:`mwnet.sklearn.MetaWeightClassifier`.

Every check that applies passes; none is marked as an expected failure. What the suite
leaves out, and why:

* the sample-weight checks (``check_sample_weights_*``,
  ``check_classifiers_one_label_sample_weights``): ``fit`` takes no ``sample_weight``
  (the weights are what the method learns; see the class docstring), so scikit-learn
  does not run them;
* ``check_array_api_input``: skipped by scikit-learn itself unless ``SCIPY_ARRAY_API`` is
  set; the estimator converts its input to numpy, then torch;
* the pandas checks (``check_classifier_data_not_an_array``, the column-name checks) run
  only where pandas is installed, which ``requirements-ci.txt`` does not pin.

The checks run on small data (tens to a few hundred samples, some with one feature or
one sample), where the default pseudo-meta path picks its meta set from the few samples
of each class; ``epochs=10`` keeps them fast and still passes
``check_classifiers_train``'s accuracy floor (0.83 on its blobs).
"""

from __future__ import annotations

import pytest
import torch

try:  # the module still imports without the extra
    from sklearn.utils.estimator_checks import parametrize_with_checks

    from mwnet.sklearn import MetaWeightClassifier
except ImportError:
    parametrize_with_checks = None


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


if parametrize_with_checks is None:

    @pytest.mark.skip(reason="needs scikit-learn, mwnet[sklearn]")
    def test_scikit_learn_estimator_checks() -> None:
        """Stands in for the checks, which are only known with scikit-learn."""

else:

    @parametrize_with_checks(
        [
            MetaWeightClassifier(epochs=10),
            MetaWeightClassifier(epochs=10, method="ce"),
        ],
        expected_failed_checks=lambda estimator: {},
    )
    def test_scikit_learn_estimator_checks(estimator, check) -> None:
        check(estimator)
