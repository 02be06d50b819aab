"""Tokenizer compression: the normalisation rule, the replacement-char rule, ids and the disk cache."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from workloads.compression import (
    build_compression,
    compress,
    compressed_vocab_size,
    compression_ratio,
    load_or_build_compression,
    normalise,
)


def word_tokenizer(words):
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    return tok


@pytest.mark.parametrize("text, key", [
    ("Hello", "hello"),
    ("HÉLLO", "hello"),             # accent stripped, lowercased
    ("  Café\t", "cafe"),           # trimmed
    ("a \t\n b", "a b"),            # whitespace run -> one space
    ("\ufb01", "fi"),               # NFKC: the ligature becomes two letters
    (" ", " "), ("\t", " "), ("\n\n ", " "),  # only whitespace -> a single space
    ("Ⅻ", "xii"),
])
def test_normalise(text, key):
    assert normalise(text) == key


def test_lookup_merges_and_keeps_first_seen_order():
    words = ["<unk>", "Hello", "the", "hello", " ", "HÉLLO", "\t", "The", "\ufb01", "fi", "\u0301", "\u0300"]
    lookup = build_compression(word_tokenizer(words))
    assert lookup.dtype == np.int64 and lookup.size == len(words)
    by_word = dict(zip(words, lookup.tolist()))
    assert by_word["<unk>"] == 0 and by_word["Hello"] == 1 and by_word["the"] == 2
    assert by_word["hello"] == by_word["HÉLLO"] == 1
    assert by_word[" "] == by_word["\t"] == 3
    assert by_word["The"] == 2
    assert by_word["\ufb01"] == by_word["fi"] == 4
    # A lone combining mark normalises to nothing; it keeps its own text as the key, not "".
    assert by_word["\u0301"] != by_word["\u0300"]
    assert compressed_vocab_size(lookup) == 7
    assert compression_ratio(lookup) == pytest.approx(7 / 12)


def byte_level_tokenizer(vocab_tokens):
    vocab = {t: i for i, t in enumerate(vocab_tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def test_replacement_char_keys_on_raw_token():
    # "é" is bytes C3 A9: in the byte-level alphabet the pieces "Ã" (C3) and "©" (A9). Alone, each
    # decodes to U+FFFD; they must stay distinct, keyed by their raw token strings.
    tok = byte_level_tokenizer(["a", "Ã", "©", "Ã©", "A", "Ãī"])
    assert tok.decode([1]) == "\ufffd" == tok.decode([2])
    lookup = build_compression(tok)
    assert len(set(lookup[[1, 2]].tolist())) == 2
    assert lookup[0] == lookup[4]  # "a" and "A"
    assert lookup[3] not in lookup[[1, 2]]  # "é" decodes fine, keyed "e"


def test_special_tokens_are_decoded_not_skipped():
    tok = word_tokenizer(["<unk>", "x"])
    tok.add_special_tokens(["<pad>", "<s>"])
    lookup = build_compression(tok)
    assert len(set(lookup.tolist())) == 4  # specials are not all merged into one empty key


def test_compress_passes_negatives_through():
    lookup = np.array([0, 1, 1, 2, 0])
    assert compress([[4, -1, 3], [2, -100, 0]], lookup).tolist() == [[0, -1, 2], [1, -100, 0]]
    with pytest.raises(ValueError, match="5"):
        compress([5], lookup)


def test_trained_bpe_and_disk_cache(tmp_path, monkeypatch):
    text = ("Le café de l'hôtel. THE CAFE of the Hotel! naïve Naive   NAÏVE\t\n" * 30
            + "def f(x):\n    return x * 2\n" * 30 + "日本語のテキスト。" * 20)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=400, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    lookup = build_compression(tok)
    size = tok.get_vocab_size()
    assert lookup.size == size and 0 < compressed_vocab_size(lookup) < size
    # Dense ids in first-seen order: each new id is one more than the largest so far.
    assert lookup[0] == 0 and np.all(np.diff(np.maximum.accumulate(lookup)) <= 1)
    # Same key -> same id, and different keys -> different ids.
    keys = {}
    for i in range(size):
        text_i = tok.decode([i])
        key = tok.id_to_token(i) if "\ufffd" in text_i else (normalise(text_i) or text_i)
        keys.setdefault(key, set()).add(int(lookup[i]))
    assert all(len(ids) == 1 for ids in keys.values()) and len(keys) == compressed_vocab_size(lookup)

    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    monkeypatch.setenv("ENGRAM_SIM_CACHE", str(tmp_path / "cache"))
    assert np.array_equal(load_or_build_compression(path), lookup)
    cached = list((tmp_path / "cache").glob("compression-*.npy"))
    assert len(cached) == 1
    assert np.array_equal(load_or_build_compression(path), lookup)  # served from the cache file
