"""Tokenizers: round trips, saved specs, GPT-2 served offline from the shared tiktoken cache."""

from __future__ import annotations

import json

import pytest

from lightning_gpt.errors import UserError
from lightning_gpt.tokenizers import ByteTokenizer, CharTokenizer, build_tokenizer, tokenizer_from_dict


def test_char_tokenizer_round_trips_and_saves_as_json():
    tok = build_tokenizer("char", ["hello world\n", "wide"])
    assert tok.vocab_size == len(set("hello world\nwide"))
    ids = tok.encode("hello wide")
    assert tok.decode(ids) == "hello wide"
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.encode("hello wide") == ids
    assert tok.eot_id is None


def test_char_tokenizer_names_characters_outside_its_vocabulary():
    tok = CharTokenizer("abc")
    with pytest.raises(UserError, match=r"characters 'xz' are not in the character vocabulary"):
        tok.encode("abxcz")


def test_byte_tokenizer_handles_any_text():
    tok = ByteTokenizer()
    text = "naïve 日本 🙂"
    assert tok.decode(tok.encode(text)) == text
    assert (tok.vocab_size, tok.eot_id) == (257, 256)
    assert tok.encode_documents(["a", "b"]) == [[97, 256], [98, 256]]


def test_gpt2_tokenizer_is_gpt2s_bpe():
    tok = build_tokenizer("gpt2")
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode_documents(["Hello", " world"]) == [[15496, 50256], [995, 50256]]
    assert tokenizer_from_dict(tok.to_dict()).name == "gpt2"


def test_cl100k_tokenizer():
    tok = build_tokenizer("cl100k_base")
    assert tok.vocab_size == 100277
    assert tok.decode(tok.encode("lightning_gpt")) == "lightning_gpt"


def test_missing_tiktoken_file_names_the_cache_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(UserError, match="set TIKTOKEN_CACHE_DIR"):
        build_tokenizer("p50k_base")


def test_unknown_tokenizer_is_a_clear_error():
    with pytest.raises(UserError, match="unknown tokenizer 'sentencepiece'"):
        build_tokenizer("sentencepiece")
    with pytest.raises(UserError, match="unknown tiktoken encoding 'foo_base'"):
        build_tokenizer("foo_base")
