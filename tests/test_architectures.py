"""Real model families as targets, every cache layout transformers 5.23 builds for them: greedy output equals the
target's own ``generate`` token for token, generating far past every sliding window (W = 8, 64 new tokens after
a 12-token prompt), so rejected drafts are rolled back out of windows that have long since moved on."""

import random
from collections import Counter

import pytest
import torch
import transformers as hf
from tiny_models import CONTEXT, EOS, PAD, _init, char_tokenizer, hf_greedy, make_diffusion_drafter
from test_sampling import NEW_TOKENS as SAMPLED_TOKENS
from test_sampling import exact_sequence_distribution, goodness_of_fit

from diffuspec import DiffuSpec, DiffuSpecConfig, DiffuSpecError, Draft, Drafter

WINDOW = 8
NEW_TOKENS = 64
PROMPT = "the quick fox"


def _family(name: str, vocab_size: int, window: int = WINDOW) -> torch.nn.Module:
    """A tiny random model of the family, sliding windows on wherever the family has them."""
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                  eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None)
    hybrid = dict(sliding_window=window, layer_types=["sliding_attention", "full_attention"])
    builders = {
        "llama": lambda: hf.LlamaForCausalLM(hf.LlamaConfig(**common)),
        "qwen2": lambda: hf.Qwen2ForCausalLM(hf.Qwen2Config(use_sliding_window=True, sliding_window=window,
                                                            max_window_layers=1, **common)),
        "qwen3": lambda: hf.Qwen3ForCausalLM(hf.Qwen3Config(head_dim=8, **common)),
        "qwen3_moe": lambda: hf.Qwen3MoeForCausalLM(hf.Qwen3MoeConfig(
            head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, **common)),
        "mistral": lambda: hf.MistralForCausalLM(hf.MistralConfig(head_dim=8, sliding_window=window, **common)),
        "gemma2": lambda: hf.Gemma2ForCausalLM(hf.Gemma2Config(head_dim=8, sliding_window=window, **common)),
        "gemma3": lambda: hf.Gemma3ForCausalLM(hf.Gemma3TextConfig(head_dim=8, **hybrid, **common)),
        "gemma4": lambda: hf.Gemma4ForCausalLM(hf.Gemma4TextConfig(  # 3 layers, the last reusing a KV cache
            head_dim=8, global_head_dim=8, vocab_size_per_layer_input=vocab_size, hidden_size_per_layer_input=8,
            **{**common, "num_hidden_layers": 3}, num_kv_shared_layers=1, sliding_window=window,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
        "phi3": lambda: hf.Phi3ForCausalLM(hf.Phi3Config(**common)),
        "gpt2": lambda: hf.GPT2LMHeadModel(hf.GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=CONTEXT, eos_token_id=EOS,
            pad_token_id=PAD, bos_token_id=None)),
        "gpt_oss": lambda: hf.GptOssForCausalLM(hf.GptOssConfig(
            head_dim=8, num_local_experts=4, num_experts_per_tok=2, **hybrid, **common)),
        "olmo2": lambda: hf.Olmo2ForCausalLM(hf.Olmo2Config(**common)),
        "granite": lambda: hf.GraniteForCausalLM(hf.GraniteConfig(**common)),
        "lfm2": lambda: hf.Lfm2ForCausalLM(hf.Lfm2Config(  # a short-convolution layer: a recorded conv state
            **common, layer_types=["conv", "full_attention"])),
        "llama4": lambda: hf.Llama4ForCausalLM(hf.Llama4TextConfig(  # chunked attention, then a global MoE layer
            head_dim=8, attention_chunk_size=window, intermediate_size_mlp=64, num_local_experts=2,
            num_experts_per_tok=1, moe_layers=[1], no_rope_layers=[1, 0], **common)),
    }
    model = _init(builders[name](), seed=sum(map(ord, name)), scale=0.3)
    with torch.no_grad():  # EOS never wins the argmax: every run goes the full length, far past the window
        model.get_output_embeddings().weight[EOS] = 0.0
    return model


FAMILIES = ["llama", "qwen2", "qwen3", "qwen3_moe", "mistral", "gemma2", "gemma3", "gemma4", "phi3", "gpt2",
            "gpt_oss", "olmo2", "granite", "lfm2", "llama4"]


class PartlyRightDrafter(Drafter):
    """Proposes the target's known greedy continuation with a fixed random quarter of the output positions wrong:
    drafts are accepted in part, so rollbacks of many lengths happen, past the window too."""

    def __init__(self, prompt_length: int, reference: list[int], vocab_size: int) -> None:
        self.start, self.vocab_size = prompt_length, vocab_size
        wrong = random.Random(0)
        self.drafts = [(t + 1) % vocab_size if wrong.random() < 0.25 else t for t in reference]

    def propose(self, context, k, sampling=None, generator=None) -> Draft:
        at = context.numel() - self.start
        return Draft(tokens=torch.tensor(self.drafts[at:at + k], dtype=torch.long))


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="module")
def drafter(tokenizer):
    return make_diffusion_drafter(len(tokenizer))


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_output_is_the_targets_own(family, tokenizer, drafter):
    target = _family(family, len(tokenizer))
    prompt = tokenizer(PROMPT)["input_ids"]
    reference = hf_greedy(target, prompt, NEW_TOKENS)
    assert len(reference) == NEW_TOKENS
    runs = {
        "cost policy": DiffuSpec(target, drafter, tokenizer),
        "fixed k": DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(draft_length=4)),
        "partly right drafts": DiffuSpec(target, PartlyRightDrafter(len(prompt), reference, len(tokenizer)), tokenizer,
                                         DiffuSpecConfig(draft_length=5, prompt_lookup_first=False)),
    }
    for name, engine in runs.items():
        out = engine.generate(prompt, max_new_tokens=NEW_TOKENS)
        assert out.token_ids == reference, name
    dropped = {d - a for a, d in zip(out.stats.accepted_lengths, out.stats.draft_lengths)}
    assert {0, 1, 2, 3} <= dropped  # rejected tails of many lengths were really rolled back


@pytest.mark.parametrize("family", ["mistral", "gemma3"])
def test_a_sliding_window_drafter_cache_rolls_back_exactly(family, tokenizer):
    """The target drafting for itself (mode ar-drafter): with an exact drafter cache every draft is accepted whole,
    however far past the window; a cache that lost positions on rollback would draft differently."""
    target = _family(family, len(tokenizer))
    engine = DiffuSpec(target, None, tokenizer, DiffuSpecConfig(mode="ar-drafter", draft_length=5), ar_drafter=target)
    prompt = tokenizer(PROMPT)["input_ids"]
    out = engine.generate(prompt, max_new_tokens=NEW_TOKENS)
    assert out.token_ids == hf_greedy(target, prompt, NEW_TOKENS)
    assert out.stats.acceptance_rate == 1.0


class RepeatingDrafter(Drafter):
    """Proposes the context's last k tokens again: cheap, deterministic, right often enough on "abcabc...",
    and wrong often enough to roll back."""

    def propose(self, context, k, sampling=None, generator=None) -> Draft:
        return Draft(tokens=context[-k:])


def test_sampling_past_a_sliding_window_follows_the_target_distribution():
    """Chi-square test (test_sampling.py) on a Mistral target whose 3-token window the prompt already passed."""
    tokenizer = char_tokenizer("abc")
    target = _family("mistral", len(tokenizer), window=3)
    engine = DiffuSpec(target, RepeatingDrafter(), tokenizer, DiffuSpecConfig(draft_length=3))
    prompt = tokenizer("abcabcab")["input_ids"]
    sampling = dict(temperature=0.9, top_k=3)
    exact = exact_sequence_distribution(target, prompt, engine.eos_token_ids, sampling)
    samples, accepted = Counter(), 0
    for seed in range(400):
        out = engine.generate(prompt, max_new_tokens=SAMPLED_TOKENS, seed=seed, **sampling)
        samples[tuple(out.token_ids)] += 1
        accepted += out.stats.accepted_tokens
    assert accepted > 0
    assert goodness_of_fit(samples, exact) > 1e-3


def test_a_sparse_attention_target_is_refused(tokenizer):
    """DeepSeek V3.2's indexer picks keys differently in a block pass than token by token once the context passes
    its top-k (checked: greedy output diverged at 40 tokens with top-6), so no draft could be verified exactly."""
    config = hf.DeepseekV32Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
        n_group=1, topk_group=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4, v_head_dim=8,
        qk_nope_head_dim=4, head_dim=4, index_topk=6, index_head_dim=8, index_n_heads=2, first_k_dense_replace=1,
        max_position_embeddings=CONTEXT)
    with pytest.raises(DiffuSpecError, match="sparse attention.*top-6 keys"):
        DiffuSpec(hf.DeepseekV32ForCausalLM(config), None, tokenizer)


def test_a_recurrent_target_is_refused(tokenizer):
    target = hf.MambaForCausalLM(hf.MambaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                                state_size=4, expand=2))
    target.config.max_position_embeddings = CONTEXT
    with pytest.raises(DiffuSpecError, match="recurrent state.*cannot forget rejected draft tokens"):
        DiffuSpec(target, make_diffusion_drafter(len(tokenizer)), tokenizer)
