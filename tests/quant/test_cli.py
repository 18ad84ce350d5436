"""The ``quantize`` subcommand parses into a call of its handler (training not run here)."""
import argparse

from tvmq.quant import cli


def test_quantize_subcommand_parses():
    parser = argparse.ArgumentParser(prog="tvmq")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["quantize", "digits_cnn", "--preset", "w4a4", "--data", "digits",
                              "--epochs", "3", "-o", "q.onnx"])
    assert args.func is cli.run and args.preset == "w4a4" and args.epochs == 3
    assert args.method == "qat" and args.output == "q.onnx"
