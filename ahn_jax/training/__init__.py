"""Distillation (and the demo's base pretraining): the loop, run state and checkpointing, the
jitted step, losses, optimizer, window sampling, data, metrics, profiling, the TPU compile check."""
