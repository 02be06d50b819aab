"""Tokenizer compression (ENGRAM.md, point 1): merge base ids whose text normalises alike.

Each base id is decoded alone and normalised: NFKC, then NFD, combining marks
(accents) dropped, lowercased, whitespace runs collapsed to one space,
trimmed; text that is only whitespace becomes a single space. Text holding
U+FFFD (a partial UTF-8 byte sequence) keys on the raw token string instead,
so distinct byte pieces stay distinct. If normalising leaves nothing (e.g. a
lone combining mark, or an empty special token), the decoded text itself is
the key, again to avoid merging unrelated tokens into one "" id. Distinct keys
get dense new ids in first-seen order of base id.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from vocab.files import cache_dir

# Bump when the rule changes, so stale disk caches are not reused.
RULE_VERSION = "1"
_WHITESPACE_RUN = re.compile(r"\s+")


def normalise(text: str) -> str:
    folded = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text))
    folded = "".join(c for c in folded if unicodedata.category(c) != "Mn").lower()
    if folded and folded.isspace():
        return " "
    return _WHITESPACE_RUN.sub(" ", folded).strip()


def token_key(tokenizer: Tokenizer, token_id: int, decoded: str) -> str:
    if "\ufffd" in decoded:
        return tokenizer.id_to_token(token_id) or decoded
    return normalise(decoded) or decoded


def build_compression(tokenizer: Tokenizer) -> np.ndarray:
    """Lookup table: base id -> compressed id (int64)."""
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    decoded = tokenizer.decode_batch([[i] for i in range(vocab_size)], skip_special_tokens=False)
    new_id: dict[str, int] = {}
    lookup = np.empty(vocab_size, dtype=np.int64)
    for base_id, text in enumerate(decoded):
        lookup[base_id] = new_id.setdefault(token_key(tokenizer, base_id, text), len(new_id))
    return lookup


def compress(ids, lookup: np.ndarray) -> np.ndarray:
    """Map base ids to compressed ids; negative ids (padding, masks) pass through unchanged."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and ids.max() >= lookup.size:
        raise ValueError(f"token id {int(ids.max())} is outside the base vocabulary of {lookup.size} ids")
    return np.where(ids >= 0, lookup[np.maximum(ids, 0)], ids)


def compressed_vocab_size(lookup: np.ndarray) -> int:
    return int(lookup.max()) + 1 if lookup.size else 0


def compression_ratio(lookup: np.ndarray) -> float:
    """Compressed vocabulary size / base vocabulary size (DeepSeek-V3: about 0.77)."""
    return compressed_vocab_size(lookup) / lookup.size


def load_or_build_compression(tokenizer_json_path: str | os.PathLike) -> np.ndarray:
    """build_compression, cached on disk by a hash of the tokenizer.json content."""
    content = Path(tokenizer_json_path).read_bytes()
    digest = hashlib.sha256(content + RULE_VERSION.encode()).hexdigest()[:24]
    path = cache_dir() / f"compression-{digest}.npy"
    if path.is_file():
        return np.load(path)
    lookup = build_compression(Tokenizer.from_str(content.decode("utf-8")))
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, lookup)
    tmp.replace(path)  # atomic, so a concurrent reader never sees half a file
    return lookup
