"""Tokenizers trained offline on a small built-in corpus, saved in the formats the real checkpoints use.

Deterministic: the same corpus and settings give the same files, byte for byte, so two checkpoints that share a
tokenizer share its bytes and a rebuild changes nothing.
"""

from __future__ import annotations

import io
import string
from collections import Counter
from pathlib import Path

_TEXT = (
    "a an the photo painting watercolor sketch portrait render of in on at with and under over near by from "
    "red green blue golden silver black white orange purple tiny huge old young bright dark misty "
    "fox cat dog horse bird boat lighthouse cliff forest snowy mountain river lake city street night dawn sunset "
    "studio light soft sharp cinematic detailed woman man child face smile eyes hair castle garden flower tree "
    "sky cloud rain sea beach desert robot dragon car train house window door table cup astronaut moon"
)
_WORDS = _TEXT.split()


def corpus(lines: int = 400) -> list[str]:
    """Deterministic pseudo-captions that put every word in many contexts, plus capitals, digits and punctuation
    so that ordinary prompts tokenize without unknown pieces."""
    n = len(_WORDS)
    captions = [" ".join(_WORDS[(i * k + k * k) % n] for k in range(1, 4 + i % 9)) for i in range(lines)]
    extras = [
        " ".join(w.capitalize() for w in _WORDS),
        " ".join(w.upper() for w in _WORDS[:20]),
        " ".join(string.digits),
        " ".join(string.punctuation),
        "A photo of 2 cats, 1 dog and 3 birds: 4k, 8k, 35mm; f/1.8!",
    ]
    return captions + extras


def train_bpe(
    words: Counter[str], alphabet: list[str], num_merges: int, end_of_word: str = "</w>"
) -> list[tuple[str, str]]:
    """Plain BPE training (most frequent adjacent pair first, ties broken by the pair itself).

    Our own loop rather than `tokenizers.trainers.BpeTrainer`: that one breaks ties by hash-map order, so its merges
    differ from process to process (measured), and the shared tokenizers must be byte-identical.
    `end_of_word` marks a word's last symbol (CLIP's `</w>`); GPT-2-style byte-level BPE has none ("").
    """
    symbols = {w: [*w[:-1], w[-1] + end_of_word] for w in words}
    known = set(alphabet) | {c + end_of_word for c in alphabet}
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, parts in symbols.items():
            for pair in zip(parts, parts[1:], strict=False):
                pairs[pair] += words[word]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        known.add(best[0] + best[1])
        for word, parts in symbols.items():
            i, merged = 0, []
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            symbols[word] = merged
    return merges


def train_clip_tokenizer(out: Path, num_merges: int = 300) -> Path:
    """CLIP's byte-level BPE trained on the corpus, saved through transformers' CLIPTokenizer (tokenizer.json) plus
    the vocab.json / merges.txt files of the real repos.

    The vocabulary is laid out like CLIP's: the 256 byte symbols, the same with `</w>`, the merges, then
    <|startoftext|> and <|endoftext|> last, so the end token has the highest id as in the real model.
    """
    import json

    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    # Pre-tokenize exactly as the runtime tokenizer will: its normalizer, regex split and byte-level mapping.
    probe = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1}, merges=[]).backend_tokenizer
    words: Counter[str] = Counter()
    for line in corpus():
        for word, _ in probe.pre_tokenizer.pre_tokenize_str(probe.normalizer.normalize_str(line)):
            words[word] += 1
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = train_bpe(words, alphabet, num_merges)
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *(a + b for a, b in merges)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*tokens, "<|startoftext|>", "<|endoftext|>"]))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer.save_pretrained(out)
    # transformers 5 writes only tokenizer.json; older loaders and the real layout also have these two.
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=2, sort_keys=False) + "\n")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return out


def train_t5_tokenizer(out: Path, vocab_size: int = 200, model_max_length: int = 512) -> Path:
    """Sentencepiece unigram (T5's model type and ids: pad 0, eos 1, unk 2), saved as the real repos do:
    spiece.model beside a transformers tokenizer.json built from the same pieces and scores.

    Identity normalisation, unlike T5's nmt_nfkc: with this environment's protobuf (< 5) neither transformers nor
    tokenizers can read a precompiled charsmap back out of spiece.model, and the two files must tokenize alike.
    """
    import sentencepiece as spm
    from transformers import T5Tokenizer

    model = io.BytesIO()
    # An in-memory iterator and writer keep temp paths out of the model proto, so its bytes are reproducible.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="unigram",
        normalization_rule_name="identity",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        num_threads=1,  # one thread: the trainer's result must not depend on scheduling
        minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)
    tokenizer.save_pretrained(out)
    (out / "spiece.model").write_bytes(model.getvalue())
    return out


def byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode symbols in its order (printable bytes as themselves first, then the others shifted
    past U+0100), the order in which GPT-2-style byte-level vocabularies begin."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
