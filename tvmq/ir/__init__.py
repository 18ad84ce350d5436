"""Names shared by ``tvmq.passes`` and ``tvmq.schedules`` (which never import each other).

Weight codecs (:mod:`tvmq.ir.codecs`): how a constant weight is stored and decoded; and the
mark an encoded weight carries in Relax (:mod:`tvmq.ir.encoded`).
"""
from tvmq.ir.codecs import CODECS, Codebook, Codec, Int8, Packed, get_codec, register_codec
from tvmq.ir.encoded import (EncodedWeight, decode_function, encode_weight, encoded_bits,
                             find_encoded)

__all__ = ["CODECS", "Codebook", "Codec", "EncodedWeight", "Int8", "Packed", "decode_function",
           "encode_weight", "encoded_bits", "find_encoded", "get_codec", "register_codec"]
