"""GPT-2 (Radford et al. 2019): learned positions, LayerNorm, GELU MLP, tied head. config.py holds its shape,
model.py the network, hf.py the transformers mapping, inspect.py what lgpt-explain reads."""
