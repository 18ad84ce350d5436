"""Hardware-specific schedules, tensor intrinsics and tuned databases (``tvmq.schedules``)."""
