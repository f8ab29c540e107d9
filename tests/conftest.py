import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

# two xdist workers share two cores
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
