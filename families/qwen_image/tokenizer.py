"""Qwen2's byte-level BPE tokenizer (Qwen2.5-VL's, the text encoder's), trained offline on the shared corpus plus
the pipelines' prompt templates, in the files of the real repos."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from checkpoints.tokenizers_offline import byte_alphabet, corpus, train_bpe

# Qwen2's added tokens in the order (and so the relative ids) of the real vocabulary, which puts them after the BPE
# tokens (151643...). The second group is not special: it is split like text by the real tokenizer too.
QWEN2_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN2_OTHER_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)


def train_qwen2_tokenizer(
    out: Path,
    templates: Sequence[str] = (),
    num_merges: int = 700,
    template_weight: int = 50,
    model_max_length: int = 131072,
    chat_template: str | None = None,
    other_added_tokens: Sequence[str] = QWEN2_OTHER_ADDED_TOKENS,
) -> Path:
    """Qwen2's byte-level BPE (its regex pre-tokenizer, NFC, no end-of-word marker) trained on the corpus plus
    `templates`, saved through transformers' Qwen2Tokenizer (tokenizer.json, tokenizer_config.json) with the
    vocab.json / merges.txt of the real repos.

    `other_added_tokens`: the added tokens that are not special (Qwen3 adds its thinking and tool-response tags).
    `templates` are prompt templates with Qwen2's special tokens in them (the diffusers pipelines' system prompts).
    Weighted `template_weight` times, their words are merged into single tokens, as the real 151k vocabulary has
    them, so a template prefix is as many tokens as the real tokenizer makes of it: the pipelines drop a fixed
    number of leading hidden states (`prompt_template_encode_start_idx`) and rely on that count.
    """
    import json
    import re

    from transformers import Qwen2Tokenizer

    probe = Qwen2Tokenizer(vocab={"<|endoftext|>": 0}, merges=[]).backend_tokenizer
    added = (*QWEN2_SPECIAL_TOKENS, *other_added_tokens)
    split_added = re.compile("|".join(re.escape(t) for t in added))

    def count(lines: Sequence[str], weight: int, words: Counter[str]) -> None:
        for line in lines:
            for piece in split_added.split(line):  # added tokens are never part of a BPE word
                for word, _ in probe.pre_tokenizer.pre_tokenize_str(probe.normalizer.normalize_str(piece)):
                    words[word] += weight

    words: Counter[str] = Counter()
    count(corpus(), 1, words)
    count(templates, template_weight, words)
    alphabet = byte_alphabet()
    merges = train_bpe(words, alphabet, num_merges, end_of_word="")
    tokens = [*alphabet, *(a + b for a, b in merges)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    for token in added:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",  # Qwen2.5-VL-Instruct's (the text encoder's) end of turn
        pad_token="<|endoftext|>",
        extra_special_tokens=list(QWEN2_SPECIAL_TOKENS[1:]),
        model_max_length=model_max_length,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        chat_template=chat_template,
    )
    tokenizer.add_tokens(list(other_added_tokens))  # added but not special, as in the real tokenizer
    tokenizer.save_pretrained(out)
    # transformers 5 writes only tokenizer.json; the real layout also has these two.
    (out / "vocab.json").write_text(json.dumps({t: i for t, i in vocab.items() if t not in added}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return out
