"""The transformers 4.57 compatibility suite runs in `.venv-compat` (`make test-compat`).

Under 5.x (`make test`) its tests are deselected, which pytest reports ("N deselected"), rather than generated only to
be skipped.
"""

from visual_token_compression.compat import TRANSFORMERS_V5


def pytest_collection_modifyitems(config, items):
    if not TRANSFORMERS_V5:
        return
    compat = [item for item in items if "tests/compat/" in item.nodeid]
    if compat:
        config.hook.pytest_deselected(items=compat)
        items[:] = [item for item in items if "tests/compat/" not in item.nodeid]
