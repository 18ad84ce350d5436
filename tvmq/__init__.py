"""tvmq: compiler-backed neural-network quantization on Apache TVM.

>>> import tvmq, torch
>>> art = tvmq.compile(tvmq.models.create("digits_cnn"), example_inputs=torch.randn(1, 1, 8, 8))
>>> art.save("out/digits")
>>> tvmq.load("out/digits").run(x)
"""
from tvmq import data, device, models, qref, quant, tune
from tvmq.artifact import Artifact, load
from tvmq.boards import Board, get_board, list_boards
from tvmq.compiler import compile
from tvmq.errors import TvmqError
from tvmq.pipeline import PipelineOptions
from tvmq.quant import PTQConfig, QATConfig, get_preset, quantize_
from tvmq.verify import verify

__version__ = "0.1.0"

__all__ = ["Artifact", "Board", "PipelineOptions", "TvmqError", "compile", "data", "device",
           "get_board", "list_boards", "load", "models", "qref", "quant", "quantize_", "QATConfig",
           "PTQConfig", "get_preset", "tune", "verify"]
