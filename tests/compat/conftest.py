"""The transformers 4.57 compatibility suite runs in `.venv-compat` (`make test-compat`).

Under 5.x (`make test`) every test here is reported as skipped with that reason rather than silently ignored.
"""

import pytest

from visual_token_compression.compat import TRANSFORMERS_V5

SKIP_UNDER_V5 = pytest.mark.skip(reason="transformers 4.57 compatibility suite: run it with `make test-compat`")


def pytest_collection_modifyitems(config, items):
    if TRANSFORMERS_V5:
        for item in items:
            if "tests/compat/" in item.nodeid:
                item.add_marker(SKIP_UNDER_V5)
