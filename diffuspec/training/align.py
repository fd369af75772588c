"""``diffuspec align``: streak-distil any diffusion drafter towards any AR verifier sharing its tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from ..loading import CPS_NGRAM_FILE
from ..path_search import CorpusNGram
from .data import read_prompts
from .distillation import DistillationSet, greedy_continuations
from .fit import align_drafter, plot_losses


def align(
    target_path: str,
    drafter_path: str,
    prompts_path: str,
    out_dir: str,
    *,
    steps: int = 400,
    block: int = 16,
    continuation: int = 64,
    lr: float = 1e-3,
    batch_size: int = 16,
    prompt_tokens: int = 64,
    device: str | None = None,
    mask_token_id: int | None = None,
    logits_shift: bool | None = None,
    ngram_order: int | None = None,
    seed: int = 0,
) -> dict:
    """Streak-distil any diffusion drafter towards any AR verifier with the same tokenizer, from the verifier's
    own greedy continuations of ``prompts``; saves the aligned drafter to ``out_dir``, with CPS's corpus n-gram
    table counted on those continuations (``cps_ngram.safetensors``, loaded with the drafter; order: as given,
    else the longest up to 5 that the vocabulary allows)."""
    from ..errors import DiffuSpecError
    from ..loading import load_models
    from ..pairing import resolve_logits_shift, resolve_mask_token, vocab_size

    models = load_models(target_path, drafter_path, device=device, precision="none")
    if not isinstance(models.drafter, torch.nn.Module):  # a DrafterWithTokenizer: it drafts through text
        raise DiffuSpecError(f"the drafter at {drafter_path} has another tokenizer than the target: alignment "
                             "trains on the target's token ids, so it needs a drafter sharing its vocabulary")
    mask_id = resolve_mask_token(models.tokenizer, models.drafter, mask_token_id)
    shifted = resolve_logits_shift(models.drafter, logits_shift)
    gen = torch.Generator().manual_seed(seed)
    # Equal-length prompts batch without padding: keep each prompt's last ``prompt_tokens`` tokens.
    encoded = [ids[-prompt_tokens:] for ids in models.tokenizer(read_prompts(prompts_path))["input_ids"]]
    encoded = [ids for ids in encoded if len(ids) == prompt_tokens]
    if not encoded:
        raise DiffuSpecError(f"no prompt in {prompts_path} has {prompt_tokens} tokens: lower --prompt-tokens")
    continuations = greedy_continuations(models.target, encoded, continuation)
    data = DistillationSet.build(encoded, continuations, models.tokenizer.pad_token_id or 0, prompt_tokens)
    losses, streaks = align_drafter(
        models.drafter, data, mask_id, steps=steps, lr=lr, batch_size=batch_size,
        block=block, min_block=min(4, block), generator=gen, shifted=shifted,
    )
    out = Path(out_dir)
    models.drafter.save_pretrained(out)
    models.tokenizer.save_pretrained(out)
    vocab = vocab_size(models.target)
    order = ngram_order or min(5, CorpusNGram.longest_order(vocab))
    rows, start = data.ngram_rows(order - 1)
    CorpusNGram.count(rows, vocab, order, start=start).save(out / CPS_NGRAM_FILE)
    plot_losses({"streak loss": losses, "expected streak": streaks}, out / "alignment_curves.png")
    return {"prompts": len(encoded), "first_streak": streaks[0], "last_streak": streaks[-1]}
