"""Tokenizers: characters, bytes, a byte-level BPE trained on the corpus, or any tiktoken encoding, behind one
small interface.

A tokenizer is described by a JSON-able dict (`to_dict`), stored with the prepared data and in
every checkpoint, so sampling decodes exactly as training encoded. char and bpe are fit on the corpus
(`fits_on_corpus`); the dict holds what they learned.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lightning_gpt.errors import UserError

EOT = "<|endoftext|>"
TIKTOKEN_ENCODINGS = ("gpt2", "r50k_base", "p50k_base", "p50k_edit", "cl100k_base", "o200k_base")
# tiktoken builds `gpt2` from these two files; `r50k_base` holds the same ranks and special token.
_GPT2_FILES = (
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
)


class Tokenizer(ABC):
    name: str
    vocab_size: int
    eot_id: int | None  # end-of-text token: separates documents, starts an empty prompt

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_documents(self, texts: list[str]) -> list[list[int]]:
        """Encode documents for a training stream: each ends with end-of-text when there is one."""
        ids = self.encode_batch(texts)
        if self.eot_id is not None:
            for doc in ids:
                doc.append(self.eot_id)
        return ids

    def encode_array(self, text: str, dtype: np.dtype) -> np.ndarray:
        """`encode` as an array, as lgpt-prepare stores tokens (a subclass may skip the Python ints)."""
        return np.asarray(self.encode(text), dtype=dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
    """One token per character of a vocabulary built from the corpus (nanoGPT's shakespeare_char).

    There is no end-of-text token; documents are joined as text, each ending with a newline.
    """

    name = "char"
    eot_id = None

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if not self.chars:
            raise UserError("the character vocabulary is empty: the corpus has no text")
        self.vocab_size = len(self.chars)
        codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._lookup = np.full(int(codepoints.max()) + 1, -1, dtype=np.int64)  # codepoint -> id
        self._lookup[codepoints] = np.arange(len(codepoints))

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        """The corpus' characters, and the newline that ends each document in the stream (one-line texts,
        jsonl rows and data.sample_by=line have none of their own)."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return cls(chars | {"\n"} if chars else chars)

    def encode(self, text: str) -> list[int]:
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        known = codepoints < len(self._lookup)
        ids = np.where(known, self._lookup[np.where(known, codepoints, 0)], -1)
        if (ids < 0).any():
            unknown = sorted({text[i] for i in np.flatnonzero(ids < 0)[:100]})
            raise UserError(
                f"characters {''.join(unknown)!r} are not in the character vocabulary "
                f"({self.vocab_size} chars seen in training); use only characters from the training text"
            )
        return ids.tolist()

    def encode_documents(self, texts: list[str]) -> list[list[int]]:
        return self.encode_batch([t if t.endswith("\n") else t + "\n" for t in texts])

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "chars": "".join(self.chars)}


class ByteTokenizer(Tokenizer):
    """The 256 byte values of UTF-8 plus end-of-text (id 256): any text, no files."""

    name = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class BPETokenizer(Tokenizer):
    """A byte-level BPE learned from the corpus with Hugging Face `tokenizers` (GPT-2's scheme: any text, no
    unknown tokens): <|endoftext|> is id 0, the 256 bytes follow, then the learned merges. A corpus with too
    few distinct words stops short of vocab_size. As in transformers, a literal <|endoftext|> in the text
    encodes as the end-of-text token."""

    name = "bpe"

    def __init__(self, tokenizer_json: str):
        from tokenizers import Tokenizer as HFTokenizer

        self.tokenizer = HFTokenizer.from_str(tokenizer_json)
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.eot_id = self.tokenizer.token_to_id(EOT)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn up to vocab_size tokens from the texts, read once as a stream. The same texts give the same
        vocabulary, so a deleted token cache is rebuilt with the ids a checkpoint was trained on."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tokenizer = HFTokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer.to_str())

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch_fast(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tokenizer_json": self.tokenizer.to_str()}


class TiktokenTokenizer(Tokenizer):
    """A tiktoken BPE encoding by name; GPT-2's is `gpt2` (50,257 tokens, end-of-text 50256)."""

    def __init__(self, name: str):
        self.name = name
        self.encoding = _load_tiktoken(name)
        self.vocab_size = self.encoding.n_vocab
        self.eot_id = self.encoding.eot_token

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)

    def encode_array(self, text: str, dtype: np.dtype) -> np.ndarray:
        if not hasattr(self.encoding, "encode_to_numpy"):  # tiktoken < 0.8
            return super().encode_array(text, dtype)
        # encode_ordinary's tokens (no special tokens: their text is encoded as text), a quarter faster
        return self.encoding.encode_to_numpy(text, disallowed_special=()).astype(dtype, copy=False)

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))


def _tiktoken_cache_dir() -> str:
    # The same lookup tiktoken itself does.
    return (
        os.environ.get("TIKTOKEN_CACHE_DIR")
        or os.environ.get("DATA_GYM_CACHE_DIR")
        or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    )


def _is_cached(url: str) -> bool:
    return os.path.exists(os.path.join(_tiktoken_cache_dir(), hashlib.sha1(url.encode()).hexdigest()))


def _load_tiktoken(name: str):
    import tiktoken

    if name not in tiktoken.list_encoding_names():
        raise UserError(
            f"unknown tiktoken encoding {name!r}; choose one of {', '.join(tiktoken.list_encoding_names())}"
        )
    source = name
    if name == "gpt2" and not all(_is_cached(url) for url in _GPT2_FILES):
        source = "r50k_base"  # identical ranks and special token, one cached file instead of two
    try:
        encoding = tiktoken.get_encoding(source)
    except Exception as e:  # requests' ConnectionError and friends: tiktoken only downloads here
        raise UserError(
            f"could not load tiktoken encoding {name!r}: no network and no cached copy in "
            f"{_tiktoken_cache_dir()} ({type(e).__name__}); set TIKTOKEN_CACHE_DIR to a folder that holds it"
        ) from e
    return encoding


# Tokenizers fit on the corpus -> the key of their to_dict() that holds what they learned.
_LEARNED = {"char": "chars", "bpe": "tokenizer_json"}


def tokenizer_spec(config: Mapping[str, Any]) -> str | dict[str, Any]:
    """The `tokenizer` config as build_tokenizer and the token cache's fingerprint take it: the keys that are
    set, or the name alone when no other is (as before bpe, so existing caches keep their fingerprints)."""
    spec = {key: value for key, value in config.items() if value is not None}
    _check_settings(spec)  # now, before a corpus is read
    return spec["name"] if len(spec) == 1 else spec


def _check_settings(spec: Mapping[str, Any]) -> None:
    """Refuse a tokenizer config whose settings that tokenizer cannot use."""
    if spec["name"] == "bpe":
        vocab_size = spec.get("vocab_size")
        if vocab_size is None:
            raise UserError("tokenizer=bpe learns tokenizer.vocab_size tokens: set it, e.g. tokenizer.vocab_size=32000")
        if not 257 <= vocab_size < 2**32:
            raise UserError(
                f"tokenizer.vocab_size={vocab_size} cannot hold a byte-level BPE: it needs 257 to 2**32 - 1 tokens "
                "(256 bytes + <|endoftext|> + merges); e.g. tokenizer.vocab_size=32000"
            )
    elif extra := [key for key in spec if key != "name"]:
        raise UserError(
            f"tokenizer.{extra[0]} is not a setting of the {spec['name']} tokenizer (only tokenizer=bpe has "
            "a vocab_size); remove it"
        )


def fits_on_corpus(spec: str | Mapping[str, Any]) -> bool:
    """Whether building this tokenizer reads the corpus: char and bpe do, unless the spec is a saved one
    (a checkpoint's or meta.json's to_dict(), which holds what they learned)."""
    spec = {"name": spec} if isinstance(spec, str) else spec
    return spec["name"] in _LEARNED and _LEARNED[spec["name"]] not in spec


def build_tokenizer(spec: str | Mapping[str, Any], texts: Iterable[str] | None = None) -> Tokenizer:
    """A tokenizer from its config (a name, or tokenizer_spec's dict) or from a saved to_dict(). char and bpe
    are fit on `texts`, the corpus, read once as a stream; the others never read them."""
    spec = {"name": spec} if isinstance(spec, str) else spec
    name = spec["name"]
    if name in _LEARNED and _LEARNED[name] in spec:  # saved: rebuild what was learned
        return CharTokenizer(spec["chars"]) if name == "char" else BPETokenizer(spec["tokenizer_json"])
    _check_settings(spec)
    if name in _LEARNED and texts is None:
        raise ValueError(f"a {name} tokenizer is fit on the corpus: pass texts")
    if name == "bpe":
        return BPETokenizer.train(texts, spec["vocab_size"])
    if name == "char":
        return CharTokenizer.from_texts(texts)
    if name == "byte":
        return ByteTokenizer()
    if name in TIKTOKEN_ENCODINGS or name.endswith("_base"):
        return TiktokenTokenizer(name)
    raise UserError(
        f"unknown tokenizer {name!r}; use char, byte, bpe or a tiktoken encoding ({', '.join(TIKTOKEN_ENCODINGS)})"
    )


def tokenizer_from_dict(spec: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer saved with `to_dict` (in meta.json or a checkpoint)."""
    return build_tokenizer(spec)
