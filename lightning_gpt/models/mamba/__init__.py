"""Mamba (Gu & Dao 2023): selective state-space layers, no attention and no positions. config.py holds its
shape, model.py the network and its recurrent cache, hf.py the transformers mapping, inspect.py what
lgpt-explain reads."""
