"""Without the ``sklearn`` extra, mwnet imports as before and ``mwnet.sklearn`` says which
extra to install (this test runs whether scikit-learn is installed or not)."""

from __future__ import annotations

import subprocess
import sys

from reliability import covers


@covers(
    "installation",
    "pip install mwnet without the sklearn extra, then import mwnet.sklearn",
    "ImportError: mwnet.sklearn needs scikit-learn, which is not installed: pip install "
    "'mwnet[sklearn]'",
)
def test_without_scikit_learn_mwnet_imports_and_mwnet_sklearn_names_the_extra() -> None:
    code = (
        "import sys\n"
        "import mwnet\n"
        "assert 'sklearn' not in sys.modules, 'import mwnet imported scikit-learn'\n"
        "sys.modules['sklearn'] = None  # as if it were not installed\n"
        "try:\n    import mwnet.sklearn\nexcept ImportError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "mwnet.sklearn needs scikit-learn, which is not installed: pip install 'mwnet[sklearn]'"
    )
