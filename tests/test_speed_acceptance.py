"""Acceptance on deterministic pairs: a drafter that drafts exactly what the target says next is accepted whole.

A bug that changes drafts but not output (every token is verified) passes the lossless tests and shows only here,
as lost acceptance: lost speed. The drafters below are the target itself: as a one-pass drafter whose
per-position distributions are the target's own (also over a smaller vocabulary than the target's, as when a
target pads its output layer), and as an AR drafter on a target with sliding-window layers, drafting far past the
window."""

import pytest
import torch
from tiny_models import CONTEXT, EOS, PAD, _init, hf_greedy, make_target
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from diffuspec import ARDrafter, DiffuSpec, DiffuSpecConfig, Draft, Drafter

PROMPT = "the quick brown fox"
NEW_TOKENS = 40
SHARP = 20.0  # the drafter's logits scaled up: its argmax carries nearly all the mass, so CPS keeps it too


class TargetAsOnePassDrafter(Drafter):
    """Per-position log-probabilities of the target's own greedy continuation (the target at temperature
    1 / SHARP), over the first ``vocab_size`` ids only: a diffusion-style drafter that is never wrong."""

    def __init__(self, target, vocab_size: int) -> None:
        self.target, self.vocab_size = target, vocab_size

    @torch.inference_mode()
    def propose(self, context, k, sampling=None, generator=None) -> Draft:
        ids, rows = context[None], []
        for _ in range(k):
            logits = self.target(input_ids=ids).logits[0, -1, : self.vocab_size].float()
            rows.append((SHARP * logits).log_softmax(-1))
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
        return Draft(logprobs=torch.stack(rows), forwards=1)


def padded_target(vocab_size: int, padding: int):
    """A target with ``padding`` output rows past the tokenizer's ids that never win the argmax (each the mean of
    the real rows, so its logit is the mean of theirs)."""
    target = make_target("llama", vocab_size + padding, seed=5)
    if padding:
        with torch.no_grad():
            head = target.get_output_embeddings().weight
            head[vocab_size:] = head[:vocab_size].mean(dim=0)
    return target


def accepted_whole(stats) -> bool:
    return (stats.drafted_tokens > 0 and stats.acceptance_rate == 1.0
            and list(stats.accepted_lengths) == list(stats.draft_lengths))


@pytest.mark.parametrize("padding", [0, 7])
@pytest.mark.parametrize("config", [dict(draft_length=4, cps=False), dict(draft_length=6, cps=True, cps_lambda=0.7),
                                    dict()], ids=["argmax-k4", "cps-k6", "default"])
def test_a_one_pass_drafter_equal_to_the_target_is_accepted_whole(tokenizer, padding, config):
    vocab = len(tokenizer)
    target = padded_target(vocab, padding)
    prompt = tokenizer(PROMPT)["input_ids"]
    reference = hf_greedy(target, prompt, NEW_TOKENS)
    assert max(reference) < vocab  # the padded rows never win: the drafter's vocabulary holds every answer
    engine = DiffuSpec(target, TargetAsOnePassDrafter(target, vocab), tokenizer,
                       DiffuSpecConfig(**config, prompt_lookup_first=False))
    out = engine.generate(prompt, max_new_tokens=NEW_TOKENS)
    assert out.token_ids == reference
    assert accepted_whole(out.stats), (out.stats.draft_lengths, out.stats.accepted_lengths)


def sliding_target(vocab_size: int, window: int = 6):
    config = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=CONTEXT, sliding_window=window,
        layer_types=["sliding_attention", "full_attention"], eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None)
    model = _init(Gemma3ForCausalLM(config), seed=11, scale=0.3)
    with torch.no_grad():  # EOS never wins: the run goes its full length, far past the window
        model.get_output_embeddings().weight[EOS] = 0.0
    return model


@pytest.mark.parametrize("draft_length", [3, 7])
def test_an_ar_drafter_equal_to_a_sliding_window_target_is_accepted_whole(tokenizer, draft_length):
    """The AR drafter's own cache rolls back its drafted tail every step, past its sliding window (6): any
    position left in or lost from that window changes its drafts."""
    target = sliding_target(len(tokenizer))
    prompt = tokenizer(PROMPT)["input_ids"]
    engine = DiffuSpec(target, None, tokenizer, DiffuSpecConfig(mode="ar-drafter", draft_length=draft_length),
                       ar_drafter=target)
    out = engine.generate(prompt, max_new_tokens=48)
    assert out.token_ids == hf_greedy(target, prompt, 48)
    assert accepted_whole(out.stats)
