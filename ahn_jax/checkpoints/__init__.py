"""Weights in and out: safetensors streaming, HF naming and config.json, the converted-weights
(Orbax) format, AHN-only weights, from_pretrained / save_model, the convert CLI."""
