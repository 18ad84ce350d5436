"""A MetaSchedule measure callback: progress bar, best latency per task, time budget."""
from __future__ import annotations

import time

from tqdm.auto import tqdm

from tvmq._tvm import derived_object, meta_schedule

ms = meta_schedule()


@derived_object
class TuneProgress(ms.measure_callback.PyMeasureCallback):
    """Tracks trials and the best measured latency of every task.

    The estimated latency of the tuned tasks is sum(weight_i * best_i), where best_i is the
    lower of the task's best measured candidate and its default schedule's time in the
    compiled model (``baseline_us``, measured on the host before tuning): the model keeps
    the default where nothing beat it, so the curve starts at the untuned total and only
    falls. Without a baseline, a task counts once measured (the sum then grows while new
    tasks get their first measurement).
    """

    def __init__(self, names: list[str], weights: list[float], total: int,
                 deadline: float | None = None, show: bool = True, offset: int = 0,
                 baseline_us: list[float | None] | None = None, on_batch=None):
        self.names, self.weights = names, weights
        #: called after each measured batch, once MetaSchedule has stored its records
        self.on_batch = on_batch
        #: set by a Ctrl-C handler: every task is terminated after the current batch
        self.interrupted = False
        self.baseline_us = list(baseline_us or [None] * len(names))
        self.best_us: list[float | None] = [None] * len(names)
        self.trials = offset
        self.curve: list[tuple[int, float]] = []
        self.deadline = deadline
        # A time budget without a trial count has no meaningful total: count up instead.
        self.bar = tqdm(total=total if total < 1_000_000 else None, initial=offset, desc="tune",
                        unit="trial", disable=not show)

    def mark_start(self) -> None:
        """The curve's first point: the estimate before this run's first trial."""
        est = self.estimated_us()
        if est is not None:
            self.curve.append((self.trials, est))

    def estimated_us(self) -> float | None:
        known = [w * min(v for v in (b, d) if v is not None)
                 for w, b, d in zip(self.weights, self.best_us, self.baseline_us)
                 if b is not None or d is not None]
        return sum(known) if known else None

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
              runner_results) -> None:
        if not runner_results:
            # the search found nothing new to measure: the task's space is exhausted (a
            # sampled register tile has a few dozen values). MetaSchedule would keep
            # searching it, ~10 s a round, to no end (ResNet-18: 8 minutes of 18).
            if not task_scheduler.tasks_[task_id].is_terminated:
                task_scheduler.terminate_task(task_id)
            if self.interrupted:
                _terminate_all(task_scheduler)
            return
        for res in runner_results:
            self.trials += 1
            if res.error_msg is None and res.run_secs:
                us = float(sum(float(s) for s in res.run_secs) / len(res.run_secs)) * 1e6
                old = self.best_us[task_id]
                self.best_us[task_id] = us if old is None else min(old, us)
        est = self.estimated_us()
        if est is not None:
            self.curve.append((self.trials, est))
        best = self.best_us[task_id]
        self.bar.set_postfix_str(f"{self.names[task_id][:24]} best={best or float('nan'):.1f}us "
                                 f"model~{(est or 0) / 1e3:.3f}ms")
        self.bar.update(len(runner_results))
        if self.on_batch is not None:
            self.on_batch()
        if self.interrupted or (self.deadline is not None and time.monotonic() > self.deadline):
            _terminate_all(task_scheduler)

    def close(self) -> None:
        self.bar.close()


def _terminate_all(task_scheduler) -> None:
    for i, record in enumerate(task_scheduler.tasks_):
        if not record.is_terminated:
            task_scheduler.terminate_task(i)
