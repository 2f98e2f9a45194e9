"""Tokenizers trained offline on a small built-in corpus, saved in the formats the real checkpoints use.

Deterministic: the same corpus and settings give the same files, so two checkpoints that share a tokenizer share
its bytes (FLUX-dev and -schnell).
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

_WORDS = [
    "a",
    "an",
    "the",
    "photo",
    "painting",
    "watercolor",
    "sketch",
    "portrait",
    "of",
    "in",
    "on",
    "at",
    "with",
    "and",
    "under",
    "over",
    "near",
    "red",
    "green",
    "blue",
    "golden",
    "silver",
    "black",
    "white",
    "tiny",
    "huge",
    "old",
    "young",
    "fox",
    "cat",
    "dog",
    "horse",
    "bird",
    "boat",
    "lighthouse",
    "cliff",
    "forest",
    "snowy",
    "mountain",
    "river",
    "city",
    "street",
    "night",
    "dawn",
    "sunset",
    "studio",
    "light",
    "soft",
    "sharp",
    "cinematic",
    "detailed",
    "woman",
    "man",
    "child",
    "face",
    "smile",
    "eyes",
    "hair",
    "castle",
    "garden",
    "flower",
    "tree",
    "sky",
    "cloud",
    "rain",
    "sea",
    "beach",
    "desert",
    "robot",
    "dragon",
    "car",
    "train",
    "house",
    "window",
    "door",
    "table",
    "cup",
]


def corpus(lines: int = 400) -> list[str]:
    """Deterministic pseudo-captions that exercise every word in many contexts."""
    n = len(_WORDS)
    return [" ".join(_WORDS[(i * k + k * k) % n] for k in range(1, 4 + i % 9)) for i in range(lines)]


def clip_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style BPE (byte-level alphabet, `</w>` word ends) whose merges spell each word left to right.

    Written out rather than trained with `tokenizers`' BpeTrainer, whose tie-breaking differs from run to run:
    the same words must give the same bytes every time.
    """
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in sorted(set(words)):
        pieces = [*word[:-1], word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if left + right not in vocab:
                merges.append((left, right))
                vocab[left + right] = len(vocab)
            left += right
    return vocab, merges


def train_clip_tokenizer(out: Path) -> Path:
    """CLIP's tokenizer over the corpus words, saved through transformers' CLIPTokenizer so it loads exactly as the
    real one does (lower-casing, byte-level pre-tokenisation, padding with <|endoftext|>)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe(list(_WORDS))
    CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77).save_pretrained(out)
    return out


def train_t5_tokenizer(out: Path, vocab_size: int = 96, model_max_length: int = 512) -> Path:
    """Sentencepiece unigram (T5's model type: pad 0, eos 1, unk 2), saved through transformers' T5Tokenizer."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "corpus.txt"
        text.write_text("\n".join(itertools.chain(corpus(), _WORDS)))
        spm.SentencePieceTrainer.train(
            input=str(text),
            model_prefix=f"{tmp}/spiece",
            vocab_size=vocab_size,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            character_coverage=1.0,
            num_threads=1,
            minloglevel=2,
        )
        processor = spm.SentencePieceProcessor(model_file=f"{tmp}/spiece.model")
        vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
        tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
        tokenizer.save_pretrained(out)
    return out
