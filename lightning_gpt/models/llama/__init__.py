"""Llama 2/3 (Touvron et al. 2023; Meta 2024): rotary positions, RMSNorm, SwiGLU, grouped-query attention.
config.py holds its shape, model.py the network, hf.py the transformers mapping, inspect.py what lgpt-explain
reads."""
