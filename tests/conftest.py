import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# under pytest-xdist (make test), the worker processes share the cores: one share of them each
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


def shared_data_dir() -> Path:
    """Real recordings for tests: $ASR_SHARED_DATA, else ../shared/data beside the clone."""
    return Path(os.environ.get("ASR_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"real recordings not found at {d} (set ASR_SHARED_DATA); CI always has them")
    return d


@pytest.fixture
def one_thread():
    """Tiny models run several times faster on one thread, more so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
