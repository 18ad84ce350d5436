"""One torch intra-op thread for the tiny digits models (restored afterwards)."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_torch_thread():
    """On 2 busy cores a second intra-op thread only adds wake-ups: training and Hessian
    products measured 8x slower with two, synthesis steps 5-10x (threads spin at barriers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
