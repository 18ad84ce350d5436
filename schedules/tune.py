"""MetaSchedule design spaces around tvmq's default kernels (for the tuning issue).

:func:`tune_space` returns a space generator that unions

* tvmq's own schedule of the blocked kernels, with the register tile (output pixels x
  channel blocks) *sampled* with ``sample_categorical`` around the default
  (:func:`tvmq.schedules.tiling.register_tile`); the schedule keeps unit loops so that
  every sampled tile replays (TVM 0.27 drops them otherwise, and a trace recorded with a
  tile of 1 failed to replay: "old_outputs 4 vs 3"); and
* TVM's ``PostOrderApply`` with the x86/Arm rule list rebuilt so that
  ``MultiLevelTilingWithIntrin`` uses tvmq's intrinsic (the shipped VNNI rule hard-codes
  ``dot_16x4_vnni``, which LLVM 22 rejects), plus ``RewriteTensorize``.

:func:`kernel_space` is the first part alone: for the kernel tasks, whose rule-based
candidates take minutes to build on a small machine, while a sampled tile builds in a
second or two.

Builders must register tvmq's intrinsics in their worker processes: pass
:func:`builder_initializer` as ``LocalBuilder(initializer=...)``, and :func:`build` as
``f_build`` (tvmq's TIR pipeline).
"""
from __future__ import annotations

from tvmq._tvm import meta_schedule
from tvmq.schedules.strategy import strategy_for

SAMPLE_TILES = True


def builder_initializer() -> None:
    """Register tvmq's tensor intrinsics (run in each MetaSchedule builder process)."""
    import tvmq.schedules.arm.intrin  # noqa: F401
    import tvmq.schedules.armv7.intrin  # noqa: F401
    import tvmq.schedules.x86.intrin  # noqa: F401


def build_worker_initializer() -> None:
    """:func:`builder_initializer`, then TVM's own tensor intrinsics, which MetaSchedule's
    ``default_build`` imports on a worker's first build (~35 s, 100+ s on 2 loaded cores):
    there the import counts against that build's timeout (two workers importing at once
    both timed out); an initializer has no timeout."""
    builder_initializer()
    import tvm.s_tir.tensor_intrin  # noqa: F401


def build(mod, target, _params=None):
    """MetaSchedule's ``default_build`` with tvmq's TIR pipeline (``f_build`` of tvmq's
    builders): candidates are timed as :func:`tvmq.compile` builds them, with small-table
    lookups in registers (:mod:`tvmq.schedules.lookup`), not as per-lane gathers. TVM's
    tensor intrinsics are not imported here (~35 s): :func:`build_worker_initializer` did."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from tvmq.schedules.lookup import register_pipeline

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target, pipeline=register_pipeline())


def _kernel_space_fn(st, fs=None):
    from tvmq.schedules import blocked as B
    from tvmq.schedules import lut_gemv, tiling
    from tvmq.schedules.kernels import kernel_block
    from tvmq.schedules.schedule_float_kernels import schedule_sch as schedule_float

    def fn(sch):
        names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
        if fs is not None and schedule_float(sch, fs, sample=SAMPLE_TILES):
            pass  # a float kernel: its register tile sampled
        elif B.BLOCK_CONV in names:
            # the arch module's parameters, with the register tile sampled
            st.schedule_conv(sch, st.kernel_intrin(kernel_block(sch, B.BLOCK_CONV)),
                             sample=SAMPLE_TILES)
        elif B.BLOCK_DENSE in names:
            st.schedule_dense(sch, st.kernel_intrin(kernel_block(sch, B.BLOCK_DENSE)))
        elif B.BLOCK_DWCONV in names:
            # the 4-tap kernel: pixels a tile and where its pad runs sampled
            st.schedule_depthwise(sch, sample=SAMPLE_TILES)
        elif lut_gemv.BLOCK_GEMV in names:
            lut_gemv.schedule(sch)  # fixed: its shape is what the byte shuffles need
        else:
            blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
            if all(int(iv.iter_type) == 0 for b in blocks for iv in b.iter_vars):
                for out in tiling.inline_epilogue(sch, ()):
                    tiling.schedule_injective(sch, out)
            # reductions (pools): left to the rule-based space of the union
        return sch

    return fn


def schedule_rules(intrin: str) -> list:
    """TVM's llvm rule list with ``MultiLevelTilingWithIntrin(intrin)`` ahead of tiling."""
    ms = meta_schedule()
    sr = ms.schedule_rule
    return [
        sr.ApplyCustomRule(),
        sr.InlineConstantScalars(),
        sr.AutoInline(into_producer=False, into_consumer=True, inline_const_tensor=True,
                      disallow_if_then_else=True, require_injective=True, require_ordered=True,
                      disallow_op=["tirx.exp"]),
        sr.AddRFactor(max_jobs_per_core=16, max_innermost_factor=64),
        sr.MultiLevelTilingWithIntrin(
            intrin, structure="SSRSRS", tile_binds=None, max_innermost_factor=64,
            vector_load_lens=None, reuse_read=None,
            reuse_write=sr.ReuseType(req="may", levels=[1, 2], scope="global")),
        sr.MultiLevelTiling(
            structure="SSRSRS", tile_binds=None, max_innermost_factor=64, vector_load_lens=None,
            reuse_read=None, reuse_write=sr.ReuseType(req="may", levels=[1, 2], scope="global")),
        sr.ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=64,
                                      unroll_max_steps=[0, 16, 64, 512], unroll_explicit=True),
        sr.RandomComputeLocation(),
    ]


def postprocs() -> list:
    ms = meta_schedule()
    pp = ms.postproc
    return [pp.DisallowDynamicLoop(), pp.RewriteParallelVectorizeUnroll(),
            pp.RewriteReductionBlock(), pp.RewriteTensorize(vectorize_init_loop=True),
            pp.RewriteLayout()]


def kernel_space(target):
    """Space generator of tvmq's kernel schedules alone (sampled register tiles), or None."""
    from tvmq.schedules.strategy import float_strategy_for

    st = strategy_for(target)
    if st is None:
        return None
    ms = meta_schedule()
    return ms.space_generator.ScheduleFn(_kernel_space_fn(st, float_strategy_for(target)),
                                         sch_rules=[], postprocs=[], mutator_probs="llvm")


def tune_space(target):
    """Space generator for ``ms.tune_tir``/``tune_relax(space=...)`` on ``target``.

    Returns None when tvmq has no integer kernels for the target (use TVM's defaults).
    """
    st = strategy_for(target)
    if st is None:
        return None
    ms = meta_schedule()
    own = kernel_space(target)
    rules = ms.space_generator.PostOrderApply(sch_rules=schedule_rules(st.intrin),
                                              postprocs=postprocs(), mutator_probs="llvm")
    return ms.space_generator.SpaceGeneratorUnion([own, rules])
