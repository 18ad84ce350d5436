"""armv7 (32-bit Arm, NEON) int8 kernels: vmull/vmlal/vpadal 4x4 intrinsics, default schedules."""
from tvmq.schedules.armv7.intrin import NEON_4x4, NEON_4x4_FULL

__all__ = ["NEON_4x4", "NEON_4x4_FULL"]
