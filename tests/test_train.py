"""tvmq.train.sgd_loop's hooks: a loss function and a per-step hook."""
import numpy as np
import torch
from torch import nn

from tvmq.data import Dataset
from tvmq.train import predict, sgd_loop


def _data(n=256, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 8).astype(np.float32)
    return Dataset(x, (x[:, 0] > 0).astype(np.int64), ["neg", "pos"])


def test_distillation_is_a_loss_function():
    """A student trained only on a teacher's soft outputs (labels unused) approaches it."""
    torch.manual_seed(0)
    teacher = nn.Linear(8, 3).eval()
    student = nn.Linear(8, 3)
    data = _data()

    def kd(model, x, _y):
        with torch.no_grad():
            target = teacher(x).softmax(1)
        return nn.functional.kl_div(model(x).log_softmax(1), target, reduction="batchmean")

    def gap():
        probs = [torch.from_numpy(predict(m, data.x)).softmax(1) for m in (student, teacher)]
        return float((probs[0] - probs[1]).abs().mean())

    before = gap()
    sgd_loop(student, data, student.parameters(), 20, 5e-2, loss_fn=kd, progress=False)
    assert gap() < 0.3 * before, (before, gap())


def test_before_step_runs_per_step_and_loss_may_backward_itself():
    """``before_step`` sees every step (e.g. to sample a sub-network); a loss function that
    runs several backward passes itself returns None."""
    model = nn.Linear(8, 2)
    data = _data(128)
    steps, calls = [], []

    def two_passes(m, x, y):
        for scale in (1.0, 0.5):
            calls.append(scale)
            (scale * nn.functional.cross_entropy(m(x), y)).backward()
        return None

    w0 = model.weight.detach().clone()
    sgd_loop(model, data, model.parameters(), 2, 1e-2, batch_size=32, loss_fn=two_passes,
             before_step=steps.append, progress=False)
    assert steps == list(range(8)) and len(calls) == 16
    assert not torch.equal(w0, model.weight.detach())
