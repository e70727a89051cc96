"""Hugging Face transformers folders in and out, for every model family.

Each family's module here (gpt2.py, llama.py, ...) maps its config and parameter names to transformers' and back;
this module finds and reads the folders and picks the family from config.json's model_type.

    import_model("gpt2")                    # by hub name (needs the network once, then HF's cache)
    import_model("/path/to/hf_folder")      # config.json + model.safetensors or pytorch_model.bin
    export(model, tokenizer, "out")         # AutoModelForCausalLM.from_pretrained("out") loads it
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from lightning_gpt.errors import UserError
from lightning_gpt.io import atomic_write, write_folder

if TYPE_CHECKING:
    from lightning_gpt.models.base import LanguageModel
    from lightning_gpt.models.family import BaseConfig
    from lightning_gpt.tokenizers import Tokenizer


def family_of(model_type: str | None, source: str) -> ModuleType:
    """The hf module of the family whose MODEL_TYPE is config.json's model_type."""
    from lightning_gpt.models import FAMILIES, family_module

    for config_class in FAMILIES.values():
        module = family_module(config_class, "hf")
        if module is not None and module.MODEL_TYPE == model_type:
            return module
    known = [m.MODEL_TYPE for c in FAMILIES.values() if (m := family_module(c, "hf")) is not None]
    raise UserError(f"{source!r} is a {model_type!r} model; we load {', '.join(known)} (config.json's model_type)")


def hf_folder(source: str) -> Path:
    """A local folder as given, or a hub model's files downloaded into Hugging Face's cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise UserError(f"model weights {source!r}: no such folder; give a folder with config.json or a hub name")
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


def import_config(source: str, block_size: int | None = None, dropout: float = 0.0) -> BaseConfig:
    """Our config for a transformers model; block_size may crop its context (as nanoGPT's crop_block_size)."""
    hf = read_json(hf_folder(source) / "config.json")
    return family_of(hf.get("model_type"), source).config_from_hf(hf, source, block_size, dropout)


def import_state_dict(source: str, block_size: int | None = None) -> dict[str, torch.Tensor]:
    """A transformers model's weights under our names and layout (positions cropped to block_size)."""
    folder = hf_folder(source)
    hf = read_json(folder / "config.json")
    return family_of(hf.get("model_type"), source).state_from_hf(read_weights(folder), hf, source, block_size)


def import_model(source: str, block_size: int | None = None, dropout: float = 0.0) -> LanguageModel:
    """Our model holding a transformers model's weights (hub name or local folder), in float32, eval mode."""
    from lightning_gpt.models import build

    model = build(import_config(source, block_size, dropout))
    try:
        model.load_state_dict(import_state_dict(source, model.config.block_size))
    except RuntimeError as e:  # missing, unexpected or misshapen tensors
        raise UserError(f"{source!r} does not match its config.json: {str(e).splitlines()[-1].strip()}") from e
    return model.eval()


def export(model: LanguageModel, tokenizer: Tokenizer | None, out_dir: str | Path) -> list[Path]:
    """Write a folder that transformers' AutoModelForCausalLM loads; return the files written.

    Tokenizer files come along when the tokenizer has a transformers equivalent (GPT-2's, a trained BPE). The
    folder is written whole beside out_dir and renamed into place (lightning_gpt.io.write_folder): out_dir may
    be new, empty or an earlier export, never a folder holding other files.
    """
    from safetensors.torch import save_file

    from lightning_gpt.hf.tokenizer import has_hf_tokenizer, write_tokenizer
    from lightning_gpt.models import family_module

    family = family_module(model.config, "hf")
    if family is None:
        raise UserError(f"the {model.config.family} family has no transformers equivalent: it cannot be exported")
    eot = tokenizer.eot_id if has_hf_tokenizer(tokenizer) else None
    config = family.config_to_hf(model.config, eot)  # refuses what transformers cannot hold, before any write
    out = Path(out_dir).expanduser()
    written: list[str] = []

    def fill(folder: Path) -> None:
        atomic_write(folder / "config.json", json.dumps(config, indent=2))
        state = {k: v.float().contiguous() for k, v in family.state_to_hf(model).items()}
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        # safetensors writes through a private temporary file (mode 0600): share it as config.json is shared.
        (folder / "model.safetensors").chmod((folder / "config.json").stat().st_mode & 0o777)
        written.extend(["config.json", "model.safetensors"])
        if eot is not None:
            written.extend(p.name for p in write_tokenizer(folder, tokenizer, model_max_length=model.config.block_size))

    write_folder(out, "transformers export", fill)
    return [out / name for name in written]


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path} not found; a transformers folder needs config.json and model.safetensors")
    try:
        return json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{path} is not valid JSON ({e}); restore the model's config.json") from e


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
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
