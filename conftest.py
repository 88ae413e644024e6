"""Repository-level pytest setup (fixtures live in tests/conftest.py).

Under pytest-xdist each worker gets an equal share of the cores, so two workers on a 2-core
machine do not each start two threads and fight over them.
"""
from __future__ import annotations

import os


def pytest_configure(config):
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))
