"""pytest set-up shared by every test file: the readers' cache (columns.cache_folder) goes to a temporary
folder of the session, never to the user's ~/.cache."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import columns


@pytest.fixture(autouse=True, scope="session")
def session_cache(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setenv(columns.CACHE_ENV, str(tmp_path_factory.mktemp("ko_meter_cache")))
    yield
    patch.undo()
