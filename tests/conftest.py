"""Test-session settings."""
import os

import torch

# pytest-xdist runs one worker per core: torch's default of one thread per core in every worker
# oversubscribes the machine, and small CPU kernels then slow down many times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
