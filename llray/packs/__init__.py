"""Run packs: K lifelong runs of one stream, architecture and strategy trained as one
batched model (parameters with a leading run dimension, per-run hyperparameters as
tensors), each run keeping its own batches, order, R, checkpoint and results rows.
"""
