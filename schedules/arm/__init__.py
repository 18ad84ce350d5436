"""aarch64 integer kernels: sdot (``+dotprod``) / NEON smull 4x4 intrinsics, default schedules."""
from tvmq.schedules.arm.intrin import NEON_4x4, NEON_4x4_FULL, SDOT_4x4

__all__ = ["SDOT_4x4", "NEON_4x4", "NEON_4x4_FULL"]
