"""Encoded weights in Relax: the mark passes write and schedules read.

An encoded weight is a call of a private Relax *decode function* on the codec's stored parts
(constants)::

    w = tvmq_decode_packed3(R.const(<uint8 bitstream>))      # in main, R.Tensor(shape, "int8")

    @R.function(private=True)                                 # attrs: the mark
    def tvmq_decode_packed3(data: R.Tensor((nbytes,), "uint8")) -> R.Tensor(shape, "int8"):
        R.func_attr({"tvmq.codec": "packed", "tvmq.codec_bits": 3,
                     "tvmq.codec_shape": shape})
        return R.call_tir(decode_prim, (data,), R.Tensor(shape, "int8"))

The function's attributes carry codec, bits and shape; its arguments, in
:attr:`~tvmq.ir.codecs.Codec.part_names` order, are the stored parts. Why a function call
and not the decode inline: ``relax.transform.FoldConstant`` evaluates every ``call_tir`` and
legalizable op whose arguments are all constants (a decode would be stored dense again), but
it never evaluates a call of a Relax function. So the weight stays encoded through any
``FoldConstant`` (and :class:`~tvmq.passes.FoldConstantKeepQuantized`); at run time the
decode runs (a ``call_tir``) unless a kernel reads the mark first (:func:`find_encoded`),
takes the parts and decodes inside its own loop nest (``tvmq.schedules.BlockIntegerOps``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tvmq._tvm import Constant, const_value, relax, te, tvm
from tvmq.ir.codecs import Codec, get_codec

MARK = "tvmq.codec"
MARK_BITS = "tvmq.codec_bits"
MARK_SHAPE = "tvmq.codec_shape"


@dataclasses.dataclass(frozen=True)
class EncodedWeight:
    """A marked weight found in a module: its codec, stored parts and decoded shape."""

    codec: Codec
    parts: dict
    shape: tuple[int, ...]

    def decode(self) -> np.ndarray:
        """The values (NumPy reference decode; ``int8``, or the codec's ``out_dtype``)."""
        return self.codec.decode_np(self.parts, self.shape)

    @property
    def stored_bytes(self) -> int:
        return self.codec.stored_bytes(self.parts)


def _private(prim):
    return prim.without_attr("global_symbol") if "global_symbol" in (prim.attrs or {}) else prim


def decode_function(builder, codec: Codec, parts: dict, shape) -> relax.GlobalVar:
    """Add the marked decode function of ``codec`` for ``parts``/``shape`` to ``builder``.

    ``builder`` is a ``relax.BlockBuilder`` (a mutator's ``builder_``); structurally equal
    functions are added once, so weights of one codec, shape and part sizes share one.
    """
    shape = tuple(int(d) for d in shape)
    arrays = [np.asarray(parts[n]) for n in codec.part_names]
    holders = [te.placeholder([tvm.tirx.IntImm("int64", d) for d in a.shape], str(a.dtype), n)
               for n, a in zip(codec.part_names, arrays)]
    out = codec.decode_te(dict(zip(codec.part_names, holders)), shape)
    tag = f"tvmq_decode_{codec.name}{codec.bits}"
    prim_gv = builder.add_func(_private(te.create_prim_func([*holders, out])), f"{tag}_tir")
    params = [relax.Var(n, relax.TensorType(a.shape, str(a.dtype)))
              for n, a in zip(codec.part_names, arrays)]
    ret = relax.TensorType(shape, codec.out_dtype)
    var = relax.Var("w", ret)
    call = builder.normalize(relax.call_tir(prim_gv, params, ret))
    body = relax.SeqExpr([relax.BindingBlock([relax.VarBinding(var, call)])], var)
    func = builder.normalize(relax.Function(params, body, ret, True))
    func = func.with_attr(MARK, codec.name).with_attr(MARK_BITS, codec.bits)
    func = func.with_attr(MARK_SHAPE, [int(d) for d in shape])
    return builder.add_func(func, tag)


def encode_weight(builder, codec: Codec, values: np.ndarray) -> relax.Call:
    """The encoded form of integer ``values``: a call of the marked decode function.

    Examples
    --------
    >>> w = encode_weight(self.builder_, get_codec("packed", 3), w_np)  # in a mutator
    >>> relax.op.nn.conv2d(x, w, out_dtype="int32")
    """
    parts = codec.encode(values)
    gv = decode_function(builder, codec, parts, values.shape)
    return relax.Call(gv, [relax.const(parts[n], str(parts[n].dtype)) for n in codec.part_names])


def _resolve(expr, lookup, depth: int = 8):
    while isinstance(expr, relax.Var) and lookup is not None and depth:
        bound = lookup(expr)
        if bound is None:
            return expr
        expr, depth = bound, depth - 1
    return expr


def _mark(mod, gv):
    try:
        func = mod[gv.name_hint] if isinstance(gv, relax.GlobalVar) else None
    except (KeyError, ValueError, tvm.TVMError):
        return None
    if not isinstance(func, relax.Function) or func.attrs is None or MARK not in func.attrs:
        return None
    return func.attrs


def find_encoded(mod: tvm.IRModule, expr, lookup=None) -> EncodedWeight | None:
    """The encoded weight ``expr`` is (following ``lookup(var) -> bound value`` through
    variables), or None: anything but a call of a marked decode function on constants.

    ``lookup``: ``mutator.lookup_binding`` in a ``PyExprMutator``, ``bindings.get`` for a
    dict built by a visitor; ``mod`` holds the decode functions.
    """
    call = _resolve(expr, lookup)
    if not isinstance(call, relax.Call):
        return None
    attrs = _mark(mod, call.op)
    if attrs is None:
        return None
    codec = get_codec(str(attrs[MARK]), int(attrs[MARK_BITS]))
    args = [_resolve(a, lookup) for a in call.args]
    if len(args) != len(codec.part_names) or not all(isinstance(a, Constant) for a in args):
        return None
    parts = {n: const_value(a).numpy() for n, a in zip(codec.part_names, args)}
    return EncodedWeight(codec, parts, tuple(int(d) for d in attrs[MARK_SHAPE]))


def encoded_bits(mod: tvm.IRModule, expr, lookup=None) -> int | None:
    """Bits per stored value of the encoded weight ``expr`` (see :func:`find_encoded`), or
    None when ``expr`` is not one (cheap: reads the mark, decodes nothing)."""
    call = _resolve(expr, lookup)
    attrs = _mark(mod, call.op) if isinstance(call, relax.Call) else None
    return None if attrs is None else int(attrs[MARK_BITS])
