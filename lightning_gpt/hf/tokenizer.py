"""Tokenizer files that transformers' AutoTokenizer loads, written offline."""

from __future__ import annotations

import json
from pathlib import Path

from lightning_gpt.tokenizers import BPETokenizer, Tokenizer

GPT2_TOKENIZERS = ("gpt2", "r50k_base")  # the same BPE ranks


def has_hf_tokenizer(tokenizer: Tokenizer | None) -> bool:
    """Whether transformers can load this tokenizer from files we write (char and byte have no equivalent)."""
    return tokenizer is not None and (tokenizer.name in GPT2_TOKENIZERS or isinstance(tokenizer, BPETokenizer))


def write_tokenizer(out: Path, tokenizer: Tokenizer, model_max_length: int = 1024) -> list[Path]:
    """The tokenizer files of a has_hf_tokenizer tokenizer, so AutoTokenizer.from_pretrained(out) loads it."""
    if isinstance(tokenizer, BPETokenizer):
        return write_bpe_tokenizer(out, tokenizer, model_max_length)
    return write_gpt2_tokenizer(out, model_max_length)


def write_bpe_tokenizer(out: Path, tokenizer: BPETokenizer, model_max_length: int = 1024) -> list[Path]:
    """A trained BPE as tokenizer.json (the Hugging Face tokenizers file it already is) and a
    tokenizer_config.json naming PreTrainedTokenizerFast: the same ids and text as ours."""
    eot = tokenizer.tokenizer.id_to_token(tokenizer.eot_id)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "bos_token": eot,
        "eos_token": eot,
        "clean_up_tokenization_spaces": False,  # decode gives back the text, as ours does
    }
    tokenizer.tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    return [out / "tokenizer.json", out / "tokenizer_config.json"]


def write_gpt2_tokenizer(out: Path, model_max_length: int = 1024) -> list[Path]:
    """GPT-2's vocab.json and merges.txt, rebuilt offline from tiktoken's ranks (same ids, same merges)."""
    from lightning_gpt.tokenizers import TiktokenTokenizer

    encoding = TiktokenTokenizer("gpt2").encoding
    ranks = {token: encoding.encode_single_token(token) for token in encoding.token_byte_values()}
    spell = bytes_to_unicode()

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


def bytes_to_unicode() -> dict[int, str]:
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
