"""Auto-tuning with MetaSchedule (XGBoost cost model), locally or on a board over RPC.

>>> report = tvmq.tune.tune("model.onnx", board="host", trials=64, db="tune-db")
>>> tvmq.compile("model.onnx", board="host", options=tvmq.PipelineOptions(database="tune-db"))
"""
from tvmq.tune.tuner import TuneReport, export_database, tune, validate_database

__all__ = ["TuneReport", "export_database", "tune", "validate_database"]
