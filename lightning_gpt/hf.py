"""GPT-2 weights in and out: Hugging Face GPT-2 folders <-> our GPT.

Both sides have the same layout and parameter names (ours follow GPT-2's), with two differences:
HF's Conv1D stores weights as (in, out) where our nn.Linear stores (out, in), and HF names the
tanh-approximate GELU "gelu_new". So converting is: rename, transpose four matrices, map the activation.

    import_gpt2("gpt2")                   # by hub name (needs the network once, then HF's cache)
    import_gpt2("/path/to/hf_folder")     # config.json + model.safetensors or pytorch_model.bin
    export_gpt2(model, tokenizer, "out")  # GPT2LMHeadModel.from_pretrained("out") loads it
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lightning_gpt.errors import UserError
from lightning_gpt.model import GPT, GPTConfig
from lightning_gpt.tokenizers import Tokenizer

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}  # HF -> ours
GPT2_TOKENIZERS = ("gpt2", "r50k_base")  # the same BPE ranks


# ---------------------------------------------------------------------------------------------------
# Import


def hf_folder(source: str) -> Path:
    """A local folder as given, or a hub model's files downloaded into Hugging Face's cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise UserError(f"GPT-2 weights {source!r}: no such folder; give a folder with config.json or a hub name")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(source, allow_patterns=["config.json", "model.safetensors"]))
        if not (folder / "model.safetensors").is_file():  # older repos have only the pickle
            folder = Path(snapshot_download(source, allow_patterns=["config.json", "pytorch_model.bin"]))
    except Exception as e:
        raise UserError(
            f"could not download {source!r} from the Hugging Face hub ({type(e).__name__}); with no network, "
            f"download it where there is one (hf download {source}) and give the local folder instead"
        ) from e
    return folder


def gpt2_config(source: str, block_size: int | None = None, dropout: float = 0.0) -> GPTConfig:
    """Our config for a GPT-2-architecture model; block_size may crop its context (as nanoGPT's crop_block_size)."""
    hf = _read_json(hf_folder(source) / "config.json")
    activation = hf.get("activation_function", "gelu_new")
    problems = []
    if hf.get("model_type") != "gpt2":
        problems.append(f"model_type is {hf.get('model_type')!r}, not 'gpt2'")
    if activation not in _ACTIVATIONS:
        problems.append(f"activation_function {activation!r} is not one of {', '.join(_ACTIVATIONS)}")
    if hf.get("n_inner") not in (None, 4 * hf.get("n_embd", 768)):
        problems.append("n_inner is not 4 * n_embd")
    if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        problems.append("layer_norm_epsilon is not 1e-5")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        problems.append("attention is not scaled by 1/sqrt(head_dim)")
    if problems:
        raise UserError(f"{source!r} is not a GPT-2 model we can load: {'; '.join(problems)}")
    positions = hf.get("n_positions", 1024)
    if block_size is not None and block_size > positions:
        raise UserError(
            f"model.block_size={block_size} is longer than {source!r}'s {positions} positions; "
            f"use model.block_size={positions} or less"
        )
    return GPTConfig(
        block_size=block_size or positions,
        vocab_size=hf.get("vocab_size", 50257),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=hf.get("n_embd", 768),
        dropout=dropout,
        bias=True,
        activation=_ACTIVATIONS[activation],
    )


def gpt2_state_dict(source: str, block_size: int | None = None) -> dict[str, torch.Tensor]:
    """A GPT-2 model's weights under our names and layout, the position table cropped to block_size."""
    folder = hf_folder(source)
    hf_state = _read_weights(folder)
    tied = _read_json(folder / "config.json").get("tie_word_embeddings", True)
    state = {}
    for name, tensor in hf_state.items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of old checkpoints, not weights
        if name == "lm_head.weight":
            if not tied and not torch.equal(tensor, hf_state.get("transformer.wte.weight", hf_state.get("wte.weight"))):
                raise UserError(f"{source!r} has an output head separate from its token embedding; ours is tied")
            continue
        state["transformer." + name] = tensor.t() if name.endswith(_CONV1D) else tensor
    if "transformer.wpe.weight" not in state:
        raise UserError(f"{folder} holds no GPT-2 weights (no wpe.weight); give a GPT-2 checkpoint folder")
    if block_size is not None:
        state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:block_size]
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied, as in GPT-2
    return state


def import_gpt2(source: str, block_size: int | None = None, dropout: float = 0.0) -> GPT:
    """Our GPT holding a Hugging Face GPT-2 model's weights (hub name or local folder), in float32."""
    config = gpt2_config(source, block_size, dropout)
    model = GPT(config)
    try:
        model.load_state_dict(gpt2_state_dict(source, config.block_size))
    except RuntimeError as e:  # missing, unexpected or misshapen tensors
        raise UserError(f"{source!r} does not match its config.json: {str(e).splitlines()[-1].strip()}") from e
    return model.eval()


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path} not found; a GPT-2 folder needs config.json and model.safetensors")
    try:
        return json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{path} is not valid JSON ({e}); restore the model's config.json") from e


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    import pickle

    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        try:
            return load_file(folder / "model.safetensors")
        except Exception as e:
            raise UserError(f"cannot read {folder / 'model.safetensors'} ({e}); download it again") from e
    if (folder / "pytorch_model.bin").is_file():
        try:
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UserError(
                f"{folder / 'pytorch_model.bin'} holds Python objects other than tensors, which could run code "
                "when loaded; we load weights only: use the model's model.safetensors instead"
            ) from e
        except Exception as e:
            raise UserError(f"cannot read {folder / 'pytorch_model.bin'} ({e}); download it again") from e
    raise UserError(f"{folder} has no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)")


# ---------------------------------------------------------------------------------------------------
# Export


def export_gpt2(model: GPT, tokenizer: Tokenizer | None, out_dir: str | Path) -> list[Path]:
    """Write a folder that transformers.GPT2LMHeadModel.from_pretrained loads; return the files written.

    Tokenizer files come along when the tokenizer is GPT-2's; other tokenizers have no HF equivalent.
    The padded vocabulary rows are dropped (they are never predicted) and biases are zeros when bias=False.
    """
    from safetensors.torch import save_file

    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the export folder {out} ({e.strerror}); choose another out_dir") from e
    c = model.config
    eot = tokenizer.eot_id if tokenizer is not None and tokenizer.name in GPT2_TOKENIZERS else None
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,
        "activation_function": "gelu_new" if c.activation == "gelu_tanh" else "gelu",
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
    }
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    save_file(_hf_state_dict(model), out / "model.safetensors", metadata={"format": "pt"})
    # safetensors writes through a private temporary file (mode 0600): share it as config.json is shared.
    (out / "model.safetensors").chmod((out / "config.json").stat().st_mode & 0o777)
    files = [out / "config.json", out / "model.safetensors"]
    if eot is not None:
        files += write_gpt2_tokenizer(out, model_max_length=c.block_size)
    return files


def _hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """GPT-2's names and Conv1D layout; the tied head is stored once, as transformers does."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if name == "transformer.wte.weight":
            tensor = tensor[: model.config.vocab_size]
        state[name] = (tensor.t() if name.endswith(_CONV1D) else tensor).float().contiguous()
    if not model.config.bias:  # HF GPT-2 always has biases: zeros are the same function
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and name != "lm_head":
                width = module.weight.shape[0] if isinstance(module, torch.nn.Linear) else module.normalized_shape[0]
                state[f"{name}.bias"] = torch.zeros(width)
    return state


def write_gpt2_tokenizer(out: Path, model_max_length: int = 1024) -> list[Path]:
    """GPT-2's vocab.json and merges.txt, rebuilt offline from tiktoken's ranks (same ids, same merges)."""
    from lightning_gpt.tokenizers import TiktokenTokenizer

    encoding = TiktokenTokenizer("gpt2").encoding
    ranks = {token: encoding.encode_single_token(token) for token in encoding.token_byte_values()}
    spell = _bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(spell[b] for b in token)

    eot = "<|endoftext|>"
    vocab = {text(token): rank for token, rank in ranks.items()} | {eot: encoding.eot_token}
    merges = [f"{text(a)} {text(b)}" for a, b in _merges(ranks)]
    special = {"bos_token": eot, "eos_token": eot, "unk_token": eot}
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": model_max_length,
        "add_prefix_space": False,
        **special,
    }
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
    }
    for name, content in files.items():
        (out / name).write_text(content, encoding="utf-8")
    return [out / name for name in files]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte, the alphabet of vocab.json and merges.txt."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    stand_ins = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(stand_ins)) for b in range(256)}


def _merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that created each multi-byte token, in rank order.

    BPE over a token's own bytes, using only lower-ranked merges, stops at exactly the two parts
    whose merge made the token.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pair_ranks = [ranks.get(a + b, rank) for a, b in zip(parts, parts[1:])]
            i = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges
