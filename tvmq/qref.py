"""NumPy integer reference for every op tvmq lowers to integer Relax.

The functions here define the semantics that the lowered graphs must reproduce *bit-exactly*;
tests compare TVM against them with ``np.array_equal``. Float helpers (:func:`quantize`,
:func:`dequantize`) follow ONNX ``QuantizeLinear``/``DequantizeLinear`` (round half to even,
saturate), including per-axis and blocked scales.

Requantization rule (used for every integer rescale: conv/dense outputs, add, concat, pools)
--------------------------------------------------------------------------------------------
The real multiplier is rounded to float32 first, ``M = float32(s_in / s_out)`` with the
scales float32 too (for conv: ``float32(float32(s_x * s_w) / s_y)``, the order onnxruntime's
``QLinearConv`` uses). A float32 has a 24-bit mantissa, so ``M`` is represented *exactly* as
``m / 2**n`` with a 31-bit integer ``m`` in ``[2**30, 2**31)`` and a right shift ``n`` in
``[1, 62]`` (:func:`quantize_multiplier`). The integer result is::

    y = clamp(R(acc * m / 2**n) + z_out, lo, hi)

where ``R`` is, by default, :func:`rounding_shift`: the exact rational rounded once, half to
even (an elementwise shift/compare chain that fuses into the conv epilogue; when the
accumulator's range rules out exact halves, :func:`tie_free_bound`, the lowering emits the
equivalent round-half-up ``(prod + 2**(n-1)) >> n``; and where the unsaturated domain is
narrow enough, the same integers in int32 arithmetic alone, saturation first:
:func:`int32_requantize_plan`). With
``float32_rounding=True`` (``PipelineOptions(match_onnxruntime=True)``), ``R`` is
:func:`rounding_shift_f32`: it rounds the exact product to 24 significant bits
(float32's rounding of ``float32(acc) * M``) and then to an integer, half to even both times.
That is what onnxruntime (MLAS, ``MlasRequantizeOutput`` and the ConvSym kernels) computes:
``cvtps2dq(cvtdq2ps(acc) * M)``. It differs from rounding the exact rational once
(:func:`rounding_shift`) only when the product lies within half a float32 ulp of a
half-integer ``k + 1/2`` (about one element in 10**5 of a conv output); then the float32
product *is* ``k + 1/2`` and the tie goes to the even neighbour. Everything is computed in
int64 (no float op); it is bit-exact against float32 arithmetic for ``|acc| < 2**24`` (a
float32 holds such an accumulator exactly; larger ones, which onnxruntime would round on
conversion, are used exactly here) and ``|acc * M| < 2**22`` (larger values saturate any
output of at most 16 bits). Multipliers below
``2**-32`` become ``m = 0`` (every int32 accumulator then rounds to zero); ``M >= 2**30`` is
rejected.
"""
from __future__ import annotations

import numpy as np

# dtype name -> (min, max); sub-byte types are held in int8/uint8 containers here.
DTYPE_RANGE = {
    "int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535),
    "int32": (-2**31, 2**31 - 1), "int4": (-8, 7), "uint4": (0, 15), "int2": (-2, 1),
    "uint2": (0, 3),
}


def dtype_range(dtype: str) -> tuple[int, int]:
    """Integer range of ``dtype`` (``"int8"``, ``"uint4"``, ...)."""
    return DTYPE_RANGE[str(dtype)]


def _bcast(param, ndim: int, axis: int, block_size: int = 0, shape=None) -> np.ndarray:
    """Broadcast a per-tensor / per-axis / blocked parameter against a ``ndim`` tensor."""
    p = np.asarray(param)
    if p.ndim == 0 or p.size == 1 and block_size == 0:
        return p.reshape(())
    axis = axis % ndim
    if block_size:
        p = np.repeat(p, block_size, axis=axis)
        if shape is not None:
            p = np.take(p, np.arange(shape[axis]), axis=axis)
        return p
    return p.reshape([-1 if i == axis else 1 for i in range(ndim)])


def quantize(x, scale, zero_point, dtype: str = "int8", axis: int = 1,
             block_size: int = 0) -> np.ndarray:
    """ONNX QuantizeLinear: ``saturate(RNE(x / scale) + zero_point)`` in float32."""
    x = np.asarray(x, dtype=np.float32)
    s = _bcast(np.asarray(scale, np.float32), x.ndim, axis, block_size, x.shape)
    z = _bcast(np.asarray(zero_point, np.float64), x.ndim, axis, block_size, x.shape)
    lo, hi = dtype_range(dtype)
    q = np.rint((x / s).astype(np.float32).astype(np.float64)) + z
    return np.clip(q, lo, hi).astype(np.int64)


def dequantize(q, scale, zero_point=0, axis: int = 1, block_size: int = 0) -> np.ndarray:
    """ONNX DequantizeLinear: ``(q - zero_point) * scale`` in float32."""
    q = np.asarray(q).astype(np.int64)
    s = _bcast(np.asarray(scale, np.float32), q.ndim, axis, block_size, q.shape)
    z = _bcast(np.asarray(zero_point).astype(np.int64), q.ndim, axis, block_size, q.shape)
    return ((q - z).astype(np.float32) * s).astype(np.float32)


def quantize_multiplier(multiplier) -> tuple[np.ndarray, np.ndarray]:
    """Split real multipliers into ``(m, n)`` with ``M ~= m / 2**n`` (see module docstring)."""
    real = np.atleast_1d(np.asarray(multiplier, dtype=np.float64))
    if not np.all(np.isfinite(real)) or np.any(real < 0):
        raise ValueError(f"requantize multiplier must be finite and >= 0, got {real}")
    if np.any(real >= 2.0 ** 30):
        raise ValueError(f"requantize multiplier {real.max()} is too large (>= 2**30)")
    frac, exp = np.frexp(real)  # real = frac * 2**exp, frac in [0.5, 1)
    m = np.rint(frac * 2.0 ** 31).astype(np.int64)
    carry = m == 2 ** 31
    m[carry] = 2 ** 30
    exp = exp.astype(np.int64) + carry
    n = 31 - exp
    tiny = (real == 0) | (n > 62)
    m[tiny], n[tiny] = 0, 1
    return m, n


def rounding_shift(prod, n) -> np.ndarray:
    """``RNE(prod / 2**n)`` on int64 ``prod`` (n >= 1), exactly."""
    prod = np.asarray(prod, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    q = prod >> n
    r = prod - (q << n)
    half = np.int64(1) << (n - 1)
    inc = (r > half) | ((r == half) & ((q & 1) == 1))
    return q + inc.astype(np.int64)


def tie_free_bound(m, n) -> np.ndarray:
    """Largest ``B`` such that ``acc * m / 2**n`` is never an exact half-integer for
    ``|acc| <= B`` (elementwise; ``-1`` means unbounded: ``m == 0`` or ``2**n | m``).

    A tie is ``acc * m == 2**(n-1) (mod 2**n)``. With ``m = m' * 2**t``, ``m'`` odd and
    ``t < n``, that is ``acc * m' == 2**(n-1-t) (mod 2**(n-t))``: ``acc`` is ``2**(n-1-t)``
    times an odd number, so ``|acc| >= 2**(n-1-t)``, and ``acc = 2**(n-1-t)`` is a tie. Below
    that bound :func:`rounding_shift` is plain round-half-up, ``(prod + 2**(n-1)) >> n``: the
    lowering uses the two-op form whenever the accumulator's range analysis proves it (see
    ``tvmq.passes._qcommon.fixed_point_multiply``). For a float32 multiplier (the
    requantization rule's ``M``), ``m`` from :func:`quantize_multiplier` is its 24-bit
    mantissa shifted left by 7, so ``t >= 7``; float64 ratios (add inputs' common scale)
    may have ``t = 0``.
    """
    m = np.atleast_1d(np.asarray(m, np.int64))
    n = np.broadcast_to(np.asarray(n, np.int64), m.shape)
    out = np.empty(m.shape, np.int64)
    for i, (mi, ni) in enumerate(zip(m.reshape(-1).tolist(), n.reshape(-1).tolist())):
        t = (mi & -mi).bit_length() - 1 if mi else ni
        out.reshape(-1)[i] = -1 if t >= ni else (1 << (ni - 1 - t)) - 1
    return out


def float32_bits(dtype: str) -> int:
    """Quotient bits :func:`rounding_shift_f32` must treat exactly for outputs of ``dtype``.

    Requantized values beyond ``2**bits`` in magnitude saturate any ``dtype`` output
    (zero point included), so their rounding does not matter.
    """
    lo, hi = dtype_range(dtype)
    return min(21, (hi - lo).bit_length() + 1)


def ulp_shift_table(bits: int) -> np.ndarray:
    """``24 - floor(log2 kk)`` for ``kk`` in ``[0, 2**bits]`` (25 at 0: ``|p|`` near 1/2)."""
    kk = np.arange((1 << bits) + 1, dtype=np.int64)
    return np.where(kk == 0, 25, 24 - np.floor(np.log2(np.maximum(kk, 1))).astype(np.int64))


def rounding_shift_f32(prod, n, bits: int = 21) -> np.ndarray:
    """``RNE(float32(prod / 2**n))`` on int64 ``prod`` (n >= 1), in integers.

    The quotient ``p`` is rounded to an integer half to even, except when it lies within half
    a float32 ulp of ``k + 1/2`` (``k = floor(p)``): float32 rounds it onto that tie, which
    then goes to the even of ``k, k + 1``. Half an ulp of ``|p|`` in ``[2**e, 2**(e+1))`` is
    ``2**(e-24)``, in units of ``2**-n`` that is ``2**n >> (24 - e)``. Near the tie
    ``floor(log2 |p|)`` is ``floor(log2 kk)`` with ``kk = k`` (``k >= 0``) or ``-k - 1``,
    read from the table :func:`ulp_shift_table` at ``min(kk, 2**bits)`` (exact for
    ``|p| < 2**bits``, ``bits <= 21``; beyond, the ulp is underestimated, which only matters
    for saturated outputs, see :func:`float32_bits`); ``kk = 0`` means ``|p|`` is near 1/2,
    in ``[1/2, 1)`` (``e = -1``) or ``[1/4, 1/2)`` (``e = -2``). Signed floor arithmetic
    throughout (no ``abs``), like the lowered graph.
    """
    prod = np.asarray(prod, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    k = prod >> n
    d = prod - (k << n) - (np.int64(1) << (n - 1))  # signed distance to k + 1/2, in 2**-n
    sign = k >> 63  # -1 where p < 0
    kk = k ^ sign  # k, or -k - 1 for p < 0: floor of |p| near the tie
    below_half = (kk == 0) & ((d ^ sign) < 0)  # |p| < 1/2
    shift = ulp_shift_table(bits)[np.minimum(kk, np.int64(1) << bits)] + below_half
    half_ulp = (np.int64(1) << n) >> shift
    on_tie = (d <= half_ulp) & (d >= -half_ulp)
    odd = (k & 1) == 1
    return k + np.where(on_tie, odd, d > 0).astype(np.int64)


def fixed_point_multiply(acc, m, n, float32_bits: int | None = None) -> np.ndarray:
    """``RNE(acc * m / 2**n)``; ``m``, ``n`` broadcast against ``acc``.

    With ``float32_bits`` the product is rounded as float32 would first
    (:func:`rounding_shift_f32`, the requantization rule); without, exactly once.
    """
    prod = np.asarray(acc, dtype=np.int64) * np.asarray(m, np.int64)
    if float32_bits:
        return rounding_shift_f32(prod, n, float32_bits)
    return rounding_shift(prod, n)


def _rne_int(x: int, s: int) -> int:
    """``RNE(x / 2**s)`` on Python ints (``s >= 1``)."""
    q, r = x >> s, x & ((1 << s) - 1)
    half = 1 << (s - 1)
    return q + (r > half or (r == half and q & 1))


def int32_requantize_plan(m, n, offset, zero_out, lo, hi, addend=None):
    """Constants of an all-int32 form of ``clamp(RNE((acc + offset) * m / 2**n) + z, lo, hi)``
    (every parameter per channel or scalar; int32 ``acc``), or None where it does not
    apply. The form, 10 int32 vector ops instead of ~16 in int64::

        a  = min(max(acc, a_lo), a_hi)      # saturation moved before the multiply
        q0 = (a * ml + cl) >> L
        y  = (a * mh + q0 + ch) >> r        # the output, already within [lo, hi]

    Why it is exact. Write ``m = m' * 2**t`` (``m'`` odd) and ``s = n - t``. The output is a
    monotone step function of ``acc``: ``a_lo`` is the first ``acc`` whose output exceeds
    ``lo``'s saturation (``lo`` itself), ``a_hi`` the last one below ``hi``'s, so clamping
    ``acc`` to ``[a_lo, a_hi]`` first changes no output and leaves no clamp to do afterwards.
    On that domain ``|acc + offset| <= B`` with ``B`` below :func:`tie_free_bound` (checked),
    so RNE is round-half-up: ``y = floor((a * m' + c') / 2**s)`` with
    ``c' = offset * m' + 2**(s-1) + z * 2**s`` (the zero point folded in: exact). The 24-bit
    ``m'`` does not fit one int32 product, so it is split ``m' = mh * 2**L + ml``
    (``ml < 2**L``) and ``c' = ch * 2**L + cl`` (``0 <= cl < 2**L``):
    ``floor((a*m' + c') / 2**L) = a*mh + ch + floor((a*ml + cl) / 2**L)``, and
    ``floor(floor(v / 2**L) / 2**r) = floor(v / 2**s)`` with ``r = s - L``. ``L`` is chosen so
    that every intermediate (``a*ml``, ``a*ml + cl``, ``a*mh``, the partial sums) lies within
    int32 for every ``a`` in the domain (checked, bounds from the domain's endpoints: each is
    linear in ``a``). Applies when the domain is narrow enough: roughly ``M >= 2**-10``.

    With ``addend`` (:func:`bias_addend`, a multiple of ``2**t``) the form is
    ``clamp(floor(((acc + offset) * m + addend) / 2**n + 1/2) + z, lo, hi)`` (half up, see
    :func:`requantize`): ``addend / 2**t`` joins ``c'`` and no tie check applies.

    Returns a dict of per-channel int arrays ``a_lo, a_hi, ml, mh, cl, ch, r`` and the scalar
    ``L``; :func:`apply_int32_plan` evaluates it (with int32 overflow checks).
    """
    half_up = addend is not None
    addend = np.zeros(1, np.int64) if addend is None else addend
    vecs = [np.atleast_1d(np.asarray(v, np.int64)).astype(object)
            for v in (m, n, offset, zero_out, lo, hi, addend)]
    size = max(v.size for v in vecs)
    if any(v.size not in (1, size) for v in vecs):
        return None
    i32_lo, i32_hi = -2 ** 31, 2 ** 31 - 1
    chans = []
    for mi, ni, oi, zero_out, lo, hi, ai in zip(*(np.broadcast_to(v, (size,)).tolist()
                                                 for v in vecs)):
        if mi <= 0:
            return None
        t = (mi & -mi).bit_length() - 1
        mp, s = mi >> t, ni - t
        if s < 2:
            return None

        fi = ai >> t  # exact: bias_addend is a multiple of 2**t

        def out(acc, mp=mp, s=s, oi=oi, zero_out=zero_out, fi=fi):
            if half_up:
                return (((acc + oi) * mp + fi + (1 << (s - 1))) >> s) + zero_out
            return _rne_int((acc + oi) * mp, s) + zero_out

        # first acc with out >= lo (lo + 1 for strictly above saturation is not needed: an
        # output of exactly lo is the saturated value too)
        a_lo = -((-((lo - zero_out) * (1 << s) - (1 << (s - 1)))) // mp) - oi
        while out(a_lo - 1) >= lo:
            a_lo -= 1
        while out(a_lo) < lo:
            a_lo += 1
        a_hi = ((hi - zero_out + 1) * (1 << s) - (1 << (s - 1))) // mp - oi
        while out(a_hi + 1) <= hi:
            a_hi += 1
        while out(a_hi) > hi:
            a_hi -= 1
        if a_lo > a_hi or a_lo < i32_lo or a_hi > i32_hi:
            return None
        bound = max(abs(a_lo + oi), abs(a_hi + oi))
        free = int(tie_free_bound(np.int64(mi), np.int64(ni))[0])
        if free >= 0 and bound > free and not half_up:
            return None
        c = oi * mp + fi + (1 << (s - 1)) + zero_out * (1 << s)
        chans.append((a_lo, a_hi, mp, s, c))
    for L in range(1, 31):
        plan = {k: [] for k in ("a_lo", "a_hi", "ml", "mh", "cl", "ch", "r")}
        for a_lo, a_hi, mp, s, c in chans:
            if s < L:
                break
            mh, ml = mp >> L, mp & ((1 << L) - 1)
            ch, cl = c >> L, c & ((1 << L) - 1)
            ends = (a_lo, a_hi)
            q0 = [(a * ml + cl) >> L for a in ends]
            vals = [a * ml for a in ends] + [a * ml + cl for a in ends] + \
                [a * mh for a in ends] + [a * mh + q for a, q in zip(ends, q0)] + \
                [a * mh + q + ch for a, q in zip(ends, q0)] + [mh, ml, ch, cl]
            if min(vals) < i32_lo or max(vals) > i32_hi:
                break
            for k, v in zip(plan, (a_lo, a_hi, ml, mh, cl, ch, s - L)):
                plan[k].append(v)
        else:
            out_plan = {k: np.array(v, np.int64) for k, v in plan.items()}
            out_plan["L"] = L
            return out_plan
    return None


def apply_int32_plan(acc, plan, axis: int = 1) -> np.ndarray:
    """Evaluate :func:`int32_requantize_plan`'s form op for op, asserting that no int32
    intermediate overflows (the lowered graph's arithmetic, in NumPy)."""
    acc = np.asarray(acc, np.int64)
    ndim = acc.ndim

    def p(name):
        return _bcast(plan[name], ndim, axis) if plan[name].size > 1 else plan[name].reshape(())

    def chk(v):
        if v.size and (v.min() < -2 ** 31 or v.max() > 2 ** 31 - 1):
            raise OverflowError("int32 intermediate out of range")
        return v

    a = np.minimum(np.maximum(acc, p("a_lo")), p("a_hi"))
    q0 = chk(chk(chk(a * p("ml")) + p("cl")) >> plan["L"])
    y = chk(chk(chk(a * p("mh")) + q0) + p("ch"))
    return y >> p("r")


def float32_multiplier(multiplier) -> np.ndarray:
    """The requantization multiplier as onnxruntime holds it: rounded to float32."""
    return np.asarray(multiplier, np.float64).astype(np.float32).astype(np.float64)


def requantize(acc, multiplier, zero_point_in=0, zero_point_out=0, dtype: str = "int8",
               axis: int = 1, lo: int | None = None, hi: int | None = None,
               float32_rounding: bool = False, bias_residual=None) -> np.ndarray:
    """Integer requantization ``clamp(R((acc - z_in) * M) + z_out)`` (module docstring).

    ``multiplier``, ``zero_point_in``, ``zero_point_out``, ``lo`` and ``hi`` are scalars or
    per index of ``axis`` (a per-channel output quantization, as NNCF writes before a
    depthwise conv). ``bias_residual``: the part of a float bias off the accumulator grid,
    in accumulator units, per channel (:func:`split_bias`); it joins the product at the
    fixed point's precision (:func:`bias_addend`) instead of being rounded away, and the
    product rounds half up (:func:`rounding_shift_half_up`): an exact half of the fixed-point
    value is an artifact of its approximation of ``acc * M + b / s_y`` (whose ties a float
    bias makes measure-zero), and half up is the two-op form. Not with ``float32_rounding``.

    ``multiplier`` is rounded to float32 here (the rule's ``M``); ``float32_rounding``
    selects ``R = rounding_shift_f32`` (onnxruntime's float32 product) over the exact
    ``rounding_shift``.
    """
    acc = np.asarray(acc, dtype=np.int64)
    m, n = quantize_multiplier(float32_multiplier(multiplier))
    if m.size > 1:
        m, n = _bcast(m, acc.ndim, axis), _bcast(n, acc.ndim, axis)
    else:
        m, n = m.reshape(()), n.reshape(())
    z_in = _bcast(np.asarray(zero_point_in, np.int64), acc.ndim, axis)
    z_out = _bcast(np.asarray(zero_point_out, np.int64), acc.ndim, axis)
    qmin, qmax = dtype_range(dtype)
    lo = qmin if lo is None else np.maximum(_bcast(np.asarray(lo, np.int64), acc.ndim, axis),
                                            qmin)
    hi = qmax if hi is None else np.minimum(_bcast(np.asarray(hi, np.int64), acc.ndim, axis),
                                            qmax)
    bits = float32_bits(dtype) if float32_rounding else None
    if bias_residual is not None:
        if float32_rounding:
            raise ValueError("a bias residual is not combined with float32_rounding")
        addend = bias_addend(np.asarray(bias_residual).reshape(-1), m.reshape(-1))
        addend = _bcast(addend, acc.ndim, axis) if np.size(addend) > 1 else addend.reshape(())
        y = rounding_shift_half_up((acc - z_in) * m + addend, n) + z_out
    else:
        y = fixed_point_multiply(acc - z_in, m, n, bits) + z_out
    return np.clip(y, lo, hi)


#: a float bias within this relative distance of the accumulator grid is taken as the integer
#: there (an exporter's int32 bias times its scale, rounded to float32: 2**-24 relative)
BIAS_GRID_TOLERANCE = 2.0 ** -18


def split_bias(bias, s_acc) -> tuple[np.ndarray, np.ndarray]:
    """``(b_int, residual)`` of a float bias at accumulator scale ``s_acc`` (broadcast).

    ``b_int = RNE(bias / s_acc)`` is added to the int32 accumulator; ``residual`` (float32,
    in the bias's units) is what is left where the bias is *off* the grid (NNCF's and
    Brevitas's float biases, BatchNorm folded into a quantized conv), zero where it is on it
    up to float32 rounding (:data:`BIAS_GRID_TOLERANCE`; onnxruntime's int32 biases). Rounding
    an off-grid bias to the grid would move every output by up to ``s_acc / (2 s_y)`` steps
    and flip the rounding of that fraction of them against the model's float graph.
    """
    bias = np.asarray(bias, np.float64)
    s_acc = np.asarray(s_acc, np.float64)
    b_int = np.rint(bias / s_acc)
    off = np.abs(bias / s_acc - b_int) > BIAS_GRID_TOLERANCE * np.maximum(np.abs(b_int), 1)
    residual = np.where(off, bias - b_int * s_acc, 0.0).astype(np.float32)
    return b_int, residual


def bias_addend(residual_acc, m) -> np.ndarray:
    """A bias residual in accumulator units as the addend of the fixed-point product
    ``acc * m`` (units of ``2**-n`` output steps): ``RNE(residual_acc * m') * 2**t`` with
    ``m = m' * 2**t``, ``m'`` odd, so that the all-int32 form (:func:`int32_requantize_plan`)
    holds it exactly too. ``|residual_acc| <= 1/2``, so ``|addend| < 2**30``."""
    m = np.asarray(m, np.int64)
    t = np.where(m > 0, np.log2(np.maximum(m & -m, 1)).astype(np.int64), 0)
    return np.rint(np.asarray(residual_acc, np.float64) * (m >> t)).astype(np.int64) << t


def rounding_shift_half_up(prod, n) -> np.ndarray:
    """``floor(prod / 2**n + 1/2)``: the rounding of a requantization that carries a bias
    residual (:func:`requantize`)."""
    n = np.asarray(n, np.int64)
    return (np.asarray(prod, np.int64) + (np.int64(1) << (n - 1))) >> n


def activation_bounds(kind: str | None, scale: float, zero_point: int, dtype: str,
                      clip: tuple[float, float] | None = None) -> tuple[int, int]:
    """Quantized ``[lo, hi]`` of a fused activation (``None``, ``"relu"`` or ``"clip"``)."""
    qmin, qmax = dtype_range(dtype)
    if kind == "relu":
        return max(qmin, int(zero_point)), qmax
    if kind == "clip":
        a, b = clip
        lo = -np.inf if a is None else a
        hi = np.inf if b is None else b
        qlo = qmin if not np.isfinite(lo) else int(quantize(lo, scale, zero_point, dtype))
        qhi = qmax if not np.isfinite(hi) else int(quantize(hi, scale, zero_point, dtype))
        return qlo, qhi
    return qmin, qmax


# ---- integer compute ops -----------------------------------------------------------------
def conv2d_int(x, w, x_zero_point=0, w_zero_point=0, strides=(1, 1), padding=(0, 0, 0, 0),
               dilation=(1, 1), groups: int = 1) -> np.ndarray:
    """Exact ``sum((x - zx) * (w - zw))`` conv (NCHW/OIHW); padding is real zero (= zx)."""
    x = np.asarray(x, np.int64) - np.int64(x_zero_point)
    w = np.asarray(w, np.int64) - _bcast(np.asarray(w_zero_point, np.int64), 4, 0)
    top, left, bottom, right = padding if len(padding) == 4 else (*padding, *padding)
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilation
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (wd - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, oh, ow), np.int64)
    og = o // groups
    for g in range(groups):
        xg = x[:, g * cg:(g + 1) * cg]
        wg = w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                           j * dw:j * dw + sw * (ow - 1) + 1:sw]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    return out


def matmul_int(a, b, a_zero_point=0, b_zero_point=0) -> np.ndarray:
    """Exact ``(a - za) @ (b - zb)`` (``zb`` per column allowed)."""
    a = np.asarray(a, np.int64) - np.int64(a_zero_point)
    b = np.asarray(b, np.int64) - np.asarray(b_zero_point, np.int64)
    return np.einsum("...k,kn->...n", a, b) if b.ndim == 2 else np.matmul(a, b)


def add_int(a, b, scale_a, zero_a, scale_b, zero_b, scale_out, zero_out, dtype="int8",
            lo=None, hi=None) -> np.ndarray:
    """Integer residual add: both inputs to the common accumulator scale, then requantize."""
    acc, s_acc = common_scale_sum([(a, scale_a, zero_a), (b, scale_b, zero_b)])
    return requantize(acc, float(s_acc) / float(np.float32(scale_out)), 0, zero_out, dtype,
                      lo=lo, hi=hi)


ACC_SHIFT = 20  # accumulator scale of add/concat: max input scale / 2**ACC_SHIFT


def fma_f32(a, b, c) -> np.ndarray:
    """float32 fused multiply-add ``round_f32(a * b + c)`` (one rounding), for float32 inputs.

    The float64 product of two float32 values is exact; the float64 sum is made
    round-to-odd (TwoSum error term, one ``nextafter`` step), which then rounds to float32
    exactly as a single rounding of the real ``a * b + c`` would (53 >= 2 * 24 + 2 bits).
    """
    a, b, c = (np.asarray(v, np.float32).astype(np.float64) for v in (a, b, c))
    p = a * b
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    odd = (s.view(np.int64) & 1) == 1
    s = np.where((err != 0) & ~odd, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def ort_add_table(scale_a, zero_a, scale_b, zero_b, scale_out, zero_out,
                  dtype: str = "uint8") -> np.ndarray:
    """onnxruntime's ``QLinearAdd`` (x86 MLAS AVX2 kernel, also used on AVX-512) as a table.

    ``table[a - lo, b - lo]`` is the output for every pair of ``dtype`` (uint8/int8) inputs:
    ``rAC = f32(sA / sC)``, ``rBC = f32(sB / sC)``,
    ``fixed = f32(zC - fma(rAC, zA, f32(rBC * zB)))`` (the compiler contracts it),
    ``v = fma(A, rAC, fma(B, rBC, fixed))``, rounded half to even (``cvtps2dq``; values
    beyond int32 become ``INT32_MIN``), then saturated. Measured bit-exact against
    onnxruntime 1.31 on every input pair.
    """
    f32 = np.float32
    r_ac, r_bc = f32(f32(scale_a) / f32(scale_out)), f32(f32(scale_b) / f32(scale_out))
    fixed = f32(f32(zero_out) - fma_f32(r_ac, f32(zero_a), f32(r_bc * f32(zero_b))))
    lo, hi = dtype_range(dtype)
    vals = np.arange(lo, hi + 1, dtype=np.float32)
    inner = fma_f32(vals, r_bc, fixed)                       # per b
    v = fma_f32(vals[:, None], r_ac, inner[None, :]).astype(np.float64)
    r = np.rint(v)
    r = np.where(np.abs(r) < 2.0 ** 31, r, -2.0 ** 31)
    return np.clip(r, lo, hi).astype(np.int64).astype(dtype)


def common_scale(scales) -> float:
    """Accumulator scale shared by the inputs of an add/concat (float32-representable)."""
    return float(np.float32(max(float(np.max(s)) for s in scales) / 2.0 ** ACC_SHIFT))


def to_common_scale(q, scale, zero_point, s_acc) -> np.ndarray:
    """``RNE((q - z) * scale / s_acc)`` in int64 (one input of an add/concat)."""
    m, n = quantize_multiplier(float(np.float32(scale)) / s_acc)
    return fixed_point_multiply(np.asarray(q, np.int64) - np.int64(zero_point), m[0], n[0])


def common_scale_sum(inputs) -> tuple[np.ndarray, float]:
    """Sum of inputs ``(q, scale, zero_point)`` at their common accumulator scale."""
    s_acc = common_scale([s for _, s, _ in inputs])
    acc = sum(to_common_scale(q, s, z, s_acc) for q, s, z in inputs)
    return acc, s_acc


def concat_int(inputs, axis, scale_out, zero_out, dtype="int8") -> np.ndarray:
    """Integer concat of ``(q, scale, zero_point)`` inputs requantized to the output scale."""
    s_acc = common_scale([s for _, s, _ in inputs])
    acc = np.concatenate([to_common_scale(q, s, z, s_acc) for q, s, z in inputs], axis=axis)
    return requantize(acc, float(s_acc) / float(np.float32(scale_out)), 0, zero_out, dtype)


def sum_pool2d_int(x, zero_point, pool, strides, padding) -> np.ndarray:
    """Window sums of ``x - zero_point`` (zero padding in the real domain)."""
    c = np.asarray(x).shape[1]
    ones = np.ones((c, 1, *pool), np.int64)
    return conv2d_int(x, ones, zero_point, 0, strides, padding, (1, 1), groups=c)


def avg_pool2d_int(x, scale_in, zero_in, scale_out, zero_out, pool, strides=None,
                   padding=(0, 0, 0, 0), dtype="int8") -> np.ndarray:
    """Average pool (count includes padding) as window sum requantized by ``s_in/(s_out*k)``."""
    strides = strides or pool
    acc = sum_pool2d_int(x, zero_in, pool, strides, padding)
    s_acc = np.float32(np.float32(scale_in) / np.float32(pool[0] * pool[1]))
    return requantize(acc, float(s_acc) / float(np.float32(scale_out)), 0, zero_out, dtype)


def global_avg_pool_int(x, scale_in, zero_in, scale_out, zero_out, dtype="int8"):
    """Global average pool over H, W (keepdims) in integers."""
    h, w = np.asarray(x).shape[2:]
    return avg_pool2d_int(x, scale_in, zero_in, scale_out, zero_out, (h, w), (1, 1), dtype=dtype)


def max_pool2d_int(x, pool, strides=None, padding=(0, 0, 0, 0)) -> np.ndarray:
    """Max pool on integers (padding never wins)."""
    x = np.asarray(x, np.int64)
    strides = strides or pool
    top, left, bottom, right = padding
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)),
               constant_values=np.iinfo(np.int64).min)
    kh, kw = pool
    oh = (x.shape[2] - kh) // strides[0] + 1
    ow = (x.shape[3] - kw) // strides[1] + 1
    out = np.full((*x.shape[:2], oh, ow), np.iinfo(np.int64).min)
    for i in range(kh):
        for j in range(kw):
            out = np.maximum(out, x[:, :, i:i + strides[0] * (oh - 1) + 1:strides[0],
                                    j:j + strides[1] * (ow - 1) + 1:strides[1]])
    return out


# ---- lookup tables -------------------------------------------------------------------------
def lut(fn, scale_in, zero_in, dtype_in: str, scale_out, zero_out, dtype_out: str) -> np.ndarray:
    """``quantize(fn(dequantize(q)))`` for every value ``q`` of ``dtype_in``, in order.

    The table of :class:`tvmq.passes.LowerIntegerLUT`: entry ``i`` is the output for input
    ``lo + i`` (``lo`` the smallest value of ``dtype_in``). ``fn`` maps a float32 array to a
    float32 array (elementwise); dequantize and quantize are :func:`dequantize` and
    :func:`quantize` (float32, round half to even, saturate). A NaN output has no quantized
    value: ``ValueError``.
    """
    lo, hi = dtype_range(dtype_in)
    x = dequantize(np.arange(lo, hi + 1), scale_in, zero_in, axis=0)
    y = np.broadcast_to(np.asarray(fn(x), np.float32), x.shape)
    if np.isnan(y).any():
        bad = int(np.flatnonzero(np.isnan(y))[0]) + lo
        raise ValueError(f"the function is NaN at the quantized input {bad}")
    return quantize(y, scale_out, zero_out, dtype_out, axis=0)


# ---- sub-byte packing ----------------------------------------------------------------------
def pack_subbyte(values, bits: int) -> np.ndarray:
    """Pack integers of ``bits`` (2 or 4) into uint8, element ``i`` in bits ``(i % k) * bits``
    of byte ``i // k`` (little-endian within the byte, ``k = 8 // bits``), flattened, padded."""
    k = 8 // bits
    flat = np.asarray(values, np.int64).reshape(-1) & ((1 << bits) - 1)
    flat = np.concatenate([flat, np.zeros((-flat.size) % k, np.int64)])
    lanes = flat.reshape(-1, k) << (np.arange(k) * bits)
    return lanes.sum(axis=1).astype(np.uint8)


def unpack_subbyte(packed, bits: int, size: int, signed: bool) -> np.ndarray:
    """Inverse of :func:`pack_subbyte` (sign-extends when ``signed``)."""
    k = 8 // bits
    p = np.asarray(packed, np.int64).reshape(-1, 1)
    v = ((p >> (np.arange(k) * bits)) & ((1 << bits) - 1)).reshape(-1)[:size]
    if signed:
        v = (v ^ (1 << (bits - 1))) - (1 << (bits - 1))
    return v
