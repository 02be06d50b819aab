"""Token sources: batches of sequences of COMPRESSED token ids.

- zipf: i.i.d. tokens, p(rank k) ~ 1 / (k + q)^s over the compressed vocabulary
  (Zipf-Mandelbrot); ranks map to ids by a seeded permutation.
- text: windows of a tokenized, compressed text corpus. Default text: the Python
  standard library's own .py sources (present offline on every machine);
  default tokenizer: a byte-level BPE trained on that text. Both the tokenizer
  and the tokenized corpus are cached on disk (workloads.compression.cache_dir).
- npy: windows of a .npy of already-compressed ids, 1-D (one stream) or 2-D (rows).

A source's `sequences(lengths, rng)` returns one int64 array per length.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from vocab.config import RunConfig
from vocab.errors import ConfigError
from vocab.files import atomic_write, cache_dir
from workloads.compression import (
    compress,
    compressed_vocab_size,
    load_or_build_compression,
)

# Default corpus: the first ~20 MB of the standard library's .py files, by sorted path.
DEFAULT_TEXT_BYTES = 20_000_000
# The BPE trains on the first ~8 MB of it: about 1.5 s on 2 cores, and the vocabulary fills.
TRAIN_TEXT_BYTES = 8_000_000
BPE_VOCAB_SIZE = 32000
# Ids 0, 1, 2 as in DeepSeek-V3's tokenizer, so the config's default pad id 2 is the pad.
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]
# Text is tokenized in pieces of about this size, so encode_batch can use every core.
ENCODE_PIECE_CHARS = 1 << 20


class ZipfSource:
    """i.i.d. Zipf-Mandelbrot tokens over vocab_size compressed ids (clipped: numpy.random.zipf's
    unbounded law with ranks beyond the vocabulary on its last rank)."""

    def __init__(self, vocab_size: int, s: float, q: float, seed: int, clipped: bool = False):
        self.cdf = _zipf_cdf(vocab_size, s, q, clipped)
        # Which id is the most frequent is arbitrary; a fixed seed keeps it reproducible.
        self.rank_to_id = np.random.default_rng([seed, 0x21FF]).permutation(vocab_size).astype(np.int64)

    def sequences(self, lengths, rng: np.random.Generator) -> list[np.ndarray]:
        lengths = np.asarray(lengths, dtype=np.int64)
        ranks = np.searchsorted(self.cdf, rng.random(int(lengths.sum())), side="right")
        ids = self.rank_to_id[np.minimum(ranks, self.cdf.size - 1)]
        return np.split(ids, np.cumsum(lengths)[:-1])


class UniformSource:
    """i.i.d. tokens, every compressed id equally likely."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def sequences(self, lengths, rng: np.random.Generator) -> list[np.ndarray]:
        lengths = np.asarray(lengths, dtype=np.int64)
        ids = rng.integers(0, self.vocab_size, size=int(lengths.sum()), dtype=np.int64)
        return np.split(ids, np.cumsum(lengths)[:-1])


@lru_cache(maxsize=8)
def _zipf_cdf(vocab_size: int, s: float, q: float, clipped: bool = False) -> np.ndarray:
    weights = (np.arange(1, vocab_size + 1) + q) ** -s
    if clipped:
        # The last rank takes the whole tail sum_{k >= V} k^-s (Euler-Maclaurin; exact to ~V^-s-3).
        v = float(vocab_size)
        weights[-1] = v ** (1 - s) / (s - 1) + v ** -s / 2 + s * v ** (-s - 1) / 12
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


class CorpusSource:
    """Windows at random offsets in rows of compressed ids; a window longer than its row wraps around."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows if rows.ndim == 2 else rows.reshape(1, -1)

    def sequences(self, lengths, rng: np.random.Generator) -> list[np.ndarray]:
        lengths = np.asarray(lengths, dtype=np.int64)
        n_rows, row_len = self.rows.shape
        row = rng.integers(0, n_rows, size=lengths.size)
        start = rng.integers(0, row_len, size=lengths.size)
        # Flat positions: each window's start, repeated, plus 0..L-1 within the window.
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        cols = (np.repeat(start, lengths) + within) % row_len
        ids = self.rows[np.repeat(row, lengths), cols].astype(np.int64)
        return np.split(ids, np.cumsum(lengths)[:-1])


def make_token_source(cfg: RunConfig):
    tokens, vocab = cfg.workload.tokens, cfg.engram.compressed_vocab_size
    if tokens.source in ("zipf", "zipf_clipped"):
        clipped = tokens.source == "zipf_clipped"
        return ZipfSource(vocab, tokens.zipf_s, 0.0 if clipped else tokens.zipf_q, cfg.workload.seed, clipped)
    if tokens.source == "uniform":
        return UniformSource(vocab)
    if tokens.source == "npy":
        return CorpusSource(_load_npy(tokens.path, vocab))
    return CorpusSource(_text_corpus(tokens.path, tokens.tokenizer, vocab))


def _load_npy(path: str, vocab_size: int) -> np.ndarray:
    field = "workload.tokens.path"
    if not Path(path).is_file():
        raise ConfigError(field, f"no such file {path!r}", "give the path of a .npy of token ids")
    try:
        ids = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # EOFError: an empty or truncated file
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(field, f"{path!r} is not a readable .npy ({why})", "save the ids with numpy.save") from None
    if ids.dtype.kind not in "iu" or ids.ndim not in (1, 2) or ids.size == 0:
        raise ConfigError(field, f"{path!r} holds {ids.dtype} with shape {ids.shape}",
                          "save a non-empty 1-D stream or 2-D [sequences, tokens] array of integer ids")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise ConfigError(field, f"ids span {low}..{high}, not all in 0..{vocab_size - 1} "
                          "(they are taken as compressed ids)",
                          "compress them first (workloads.compression.compress), or raise "
                          "engram.compressed_vocab_size")
    return ids.astype(np.int64)


def _text_corpus(text_path: str | None, tokenizer_path: str | None, vocab_size: int) -> np.ndarray:
    if text_path is not None and not Path(text_path).is_file():
        raise ConfigError("workload.tokens.path", f"no such file {text_path!r}", "give the path of a UTF-8 text file")
    if tokenizer_path is not None and not Path(tokenizer_path).is_file():
        raise ConfigError("workload.tokens.tokenizer", f"no such file {tokenizer_path!r}",
                          "give the path of a tokenizer.json, or leave it out for the built-in BPE")
    tokenizer_json = Path(tokenizer_path) if tokenizer_path else default_tokenizer_path()
    lookup = load_or_build_compression(tokenizer_json)
    if compressed_vocab_size(lookup) > vocab_size:
        raise ConfigError("engram.compressed_vocab_size",
                          f"{vocab_size} is below the tokenizer's {compressed_vocab_size(lookup)} compressed ids",
                          f"set compressed_vocab_size to at least {compressed_vocab_size(lookup)}")
    corpus = _compressed_corpus(str(text_path) if text_path else None, str(tokenizer_json))
    if corpus.size == 0:
        raise ConfigError("workload.tokens.path", "the text yields no tokens", "give a non-empty text file")
    return corpus


@lru_cache(maxsize=4)
def _compressed_corpus(text_path: str | None, tokenizer_json: str) -> np.ndarray:
    """The whole text, tokenized and compressed; cached on disk by text and tokenizer content."""
    texts = [Path(text_path).read_text("utf-8", errors="replace")] if text_path else stdlib_texts()
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", errors="replace"))
    digest.update(Path(tokenizer_json).read_bytes())
    path = cache_dir() / f"corpus-{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        return np.load(path)
    tokenizer = Tokenizer.from_file(tokenizer_json)
    pieces = [text[i:i + ENCODE_PIECE_CHARS] for text in texts for i in range(0, len(text), ENCODE_PIECE_CHARS)]
    ids = [np.array(e.ids, dtype=np.int64) for e in tokenizer.encode_batch(pieces, add_special_tokens=False)]
    corpus = compress(np.concatenate(ids) if ids else np.zeros(0, np.int64), load_or_build_compression(tokenizer_json))
    corpus = corpus.astype(np.int32)  # half the disk and memory; ids are far below 2**31
    atomic_write(path, lambda f: np.save(f, corpus), binary=True)
    return corpus


@lru_cache(maxsize=1)
def stdlib_texts() -> list[str]:
    """The standard library's .py sources (not site-packages), sorted by path, up to DEFAULT_TEXT_BYTES."""
    root = Path(sysconfig.get_paths()["stdlib"] or os.path.dirname(os.__file__))
    texts, total = [], 0
    for p in sorted(root.rglob("*.py")):
        if {"site-packages", "dist-packages"} & set(p.relative_to(root).parts) or not p.is_file():
            continue
        try:
            text = p.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few test files are deliberately not UTF-8
        texts.append(text)
        total += len(text)
        if total >= DEFAULT_TEXT_BYTES:
            break
    return texts


def default_tokenizer_path() -> Path:
    """A byte-level BPE trained on the standard library text, trained once and kept on disk."""
    texts = stdlib_texts()
    train, total = [], 0
    for text in texts:
        train.append(text)
        total += len(text)
        if total >= TRAIN_TEXT_BYTES:
            break
    digest = hashlib.sha256(f"{BPE_VOCAB_SIZE}|{SPECIAL_TOKENS}".encode())
    for text in train:
        digest.update(text.encode("utf-8"))
    path = cache_dir() / f"bpe-stdlib-{digest.hexdigest()[:24]}.json"
    if not path.is_file():
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator(train, trainer)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tokenizer.save(str(tmp))
        tmp.replace(path)
    return path
