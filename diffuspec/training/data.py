"""The corpus (the interpreter's own standard library), the BPE tokenizer, token streams and prompt files."""

from __future__ import annotations

import json
import sysconfig
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

EOS_TOKEN, MASK_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|mask|>", "<|pad|>"
SKIPPED_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages"}


def stdlib_corpus(max_bytes: int, heldout_every: int) -> tuple[list[str], list[str], list[str]]:
    """(train texts, held-out texts, relative paths used): the interpreter's own ``*.py`` sources, sorted by
    path, tests excluded, whole files until ``max_bytes``; held-out by a hash of the path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not SKIPPED_DIRS & set(p.relative_to(root).parts))
    train, heldout, used, total = [], [], [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if total + len(text) > max_bytes:
            break
        total += len(text)
        rel = path.relative_to(root).as_posix()
        used.append(rel)
        (heldout if zlib.crc32(rel.encode()) % heldout_every == 0 else train).append(text)
    return train, heldout, used


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with EOS, mask and pad tokens; ``save_pretrained`` makes it ``AutoTokenizer``-loadable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, MASK_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS_TOKEN, mask_token=MASK_TOKEN, pad_token=PAD_TOKEN,
        model_max_length=None,
    )


def token_stream(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> torch.Tensor:
    """All texts as one token sequence, each file ended by EOS."""
    ids: list[int] = []
    for encoded in tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []:
        ids += encoded + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def random_windows(stream: torch.Tensor, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, stream.numel() - length, (n,), generator=generator)
    return torch.stack([stream[s : s + length] for s in starts.tolist()])


def ordinary_token_ids(tokenizer) -> torch.Tensor:
    """Every token id that is not a special token."""
    return torch.tensor(sorted(set(range(len(tokenizer))) - set(tokenizer.all_special_ids)))


REPEAT_VOCABULARIES = (16, 64, 256, None)  # None: every ordinary token


def repeated_sequences(token_ids: torch.Tensor, rows: int, length: int, longest: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Induction data: each row is random tokens, then a random span of 4..``longest`` tokens, then that span
    again; only the repeat's predictable tokens are learnt. Each row draws from its own random subset of
    ``token_ids`` (16, 64, 256 tokens or all of them, in turn): small alphabets make the copying easy to
    start learning, fresh subsets keep it from being learnt for particular tokens. Returns (tokens, learn)."""
    tokens = torch.empty(rows, length, dtype=torch.long)
    learn = torch.zeros(rows, length, dtype=torch.bool)
    for row in range(rows):
        size = min(REPEAT_VOCABULARIES[row % len(REPEAT_VOCABULARIES)] or token_ids.numel(), token_ids.numel())
        alphabet = token_ids[torch.randperm(token_ids.numel(), generator=generator)[:size]]
        span = int(torch.randint(4, min(longest, length // 2) + 1, (1,), generator=generator))
        draw = alphabet[torch.randint(0, size, (length - span,), generator=generator)]
        tokens[row] = torch.cat([draw, draw[length - 2 * span :]])
        learn[row, length - span + 1 :] = True
    return tokens, learn


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line) or JSON lines with "prompt", "text" or "turns" (Spec-Bench)."""
    prompts = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            row = json.loads(line)
            prompts.append(row.get("prompt") or row.get("text") or row["turns"][0])
        else:
            prompts.append(line)
    return prompts

