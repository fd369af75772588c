"""Drafter adapters: DiffusionGemma (native in transformers 5.23) for a Gemma 4 target, Dream- and LLaDA-style
remote-code drafters (replicas honouring the published contracts, loaded through trust_remote_code), vocabularies
that extend the target's, and drafters with a tokenizer of their own (drafts translated through text)."""

import runpy
from pathlib import Path

import pytest
import torch
from tiny_models import CONTEXT, MASK, _init, char_tokenizer, hf_greedy, make_target
from remote_replicas import write_replica
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModel, Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from diffuspec import DiffuSpec, DiffuSpecConfig, Draft, Drafter, MaskedDiffusionDrafter
from diffuspec.adapters import (DiffusionGemmaDrafter, DrafterWithTokenizer, TextTranslatingDrafter,
                                tiny_diffusion_gemma_pair)

EXAMPLES = Path(__file__).parent.parent / "examples"
PROMPT = "the quick fox"
NEW_TOKENS = 64  # far past the sliding window (8) of the tiny Gemma 4 / DiffusionGemma pair
SAMPLED = dict(max_new_tokens=24, temperature=0.8, top_p=0.95)
TEXT = ["the quick brown fox jumps over the lazy dog", "a lazy dog sleeps in the sun", "quick brown foxes run",
        "the sun is over the dog and the fox"]


def same_samples_as_the_target_alone(engine, prompt, seeds=range(3)) -> bool:
    """Gumbel-max verification makes a seed's sample the one target-only decoding draws, whatever was drafted."""
    return all(engine.generate(prompt, seed=s, **SAMPLED).token_ids ==
               engine.generate(prompt, seed=s, mode="ar", **SAMPLED).token_ids for s in seeds)


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="module")
def prompt(tokenizer):
    return tokenizer(PROMPT)["input_ids"]


# ----- DiffusionGemma ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_pair(tokenizer):
    return tiny_diffusion_gemma_pair(len(tokenizer))


def test_diffusion_gemma_is_recognised_and_lossless_for_gemma4(gemma_pair, tokenizer, prompt):
    target, drafter = gemma_pair
    reference = hf_greedy(target, prompt, NEW_TOKENS)
    for config in (DiffuSpecConfig(), DiffuSpecConfig(draft_length=4, denoising_steps=2)):
        engine = DiffuSpec(target, drafter, tokenizer, config)
        assert isinstance(engine._drafters["diffuspec"](), DiffusionGemmaDrafter)
        assert "dlm" not in engine.modes  # no mask token: it is not decoded on its own
        out = engine.generate(prompt, max_new_tokens=NEW_TOKENS)
        assert out.token_ids == reference
        assert out.stats.drafter_forwards > 0
    assert same_samples_as_the_target_alone(engine, prompt)


def test_diffusion_gemma_encoder_cache_is_exact(gemma_pair, tokenizer):
    """Encoding new tokens onto the cache (past the window) equals encoding the whole context at once."""
    _, drafter = gemma_pair
    context = torch.tensor(tokenizer("the quick brown fox jumps over")["input_ids"])
    incremental, fresh = DiffusionGemmaDrafter(drafter, denoising_steps=2), DiffusionGemmaDrafter(drafter, 2)
    for end in (5, 13, 21):
        incremental.propose(context[:end], 4)
    drafts = [d.propose(context, 6, generator=torch.Generator().manual_seed(3)).logprobs for d in (incremental, fresh)]
    torch.testing.assert_close(drafts[0], drafts[1], atol=1e-5, rtol=1e-5)


def test_the_diffusion_gemma_example_runs(monkeypatch, capsys):
    monkeypatch.setenv("DIFFUSPEC_EXAMPLE_TOKENS", "16")
    runpy.run_path(str(EXAMPLES / "diffusion_gemma_tiny.py"), run_name="__main__")  # in-process: no second import
    out = capsys.readouterr().out
    assert "identical to Gemma 4's own generate" in out and "the target's own sample" in out


# ----- a transformers masked-diffusion drafter with sliding-window layers -------------------------------------


def test_a_sliding_window_diffusion_drafter_keeps_its_prefix_cache(tokenizer, prompt):
    """Its layers hold fewer keys than the context: the model builds its own windowed bidirectional masks."""
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=CONTEXT, use_bidirectional_attention=True,
        sliding_window=8, layer_types=["sliding_attention", "full_attention"], eos_token_id=1, pad_token_id=0,
        bos_token_id=None)
    drafter = _init(Gemma3ForCausalLM(config), seed=4, scale=0.3)
    target = make_target("llama", len(tokenizer))
    engine = DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(draft_length=4))
    assert engine._drafters["diffuspec"]()._model.use_cache
    assert engine.generate(prompt, max_new_tokens=NEW_TOKENS).token_ids == hf_greedy(target, prompt, NEW_TOKENS)


# ----- remote-code replicas: Dream (shifted, extended vocabulary), LLaDA (unshifted, no cache) ------------------


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE tokenizer (multi-character tokens, its own ids): unlike the character one."""
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer, core.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    core.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=90, special_tokens=["<unk>", "<eos>", "<mask>"],
                                                       initial_alphabet=list("abcdefghijklmnopqrstuvwxyz .,")))
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>", mask_token="<mask>")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A Qwen2 target whose tokenizer names no mask token (as Qwen2.5's does not), and beside it: a Dream replica
    whose tokenizer adds one at the next id, an LLaDA replica with the target's tokenizer, and an LLaDA replica
    with a BPE tokenizer of its own."""
    root = tmp_path_factory.mktemp("checkpoints")
    target_tokenizer = char_tokenizer(mask=False)
    vocab = len(target_tokenizer)
    make_target("qwen2", vocab, seed=3).save_pretrained(root / "target")
    target_tokenizer.save_pretrained(root / "target")
    dream_tokenizer = char_tokenizer(mask=False)
    dream_tokenizer.add_special_tokens({"mask_token": "<|mask|>"})
    write_replica("dream", root / "dream", dream_tokenizer, vocab_size=vocab + 1, mask_token_id=None)
    write_replica("llada", root / "llada", target_tokenizer, vocab_size=vocab, mask_token_id=MASK)
    bpe = bpe_tokenizer()
    write_replica("llada", root / "llada-bpe", bpe, vocab_size=len(bpe), mask_token_id=bpe.mask_token_id)
    return root


def load(checkpoints, drafter: str, **config) -> DiffuSpec:
    return DiffuSpec.from_pretrained(str(checkpoints / "target"), str(checkpoints / drafter),
                                     trust_remote_code=True, config=DiffuSpecConfig(**config))


def test_dream_loads_with_the_rotary_shim_and_drafts_with_shifted_logits(checkpoints):
    with pytest.raises(KeyError, match="default"):  # what transformers 5.23 does to Dream's code without the shim
        AutoModel.from_pretrained(checkpoints / "dream", trust_remote_code=True)
    engine = load(checkpoints, "dream")
    assert "default" not in ROPE_INIT_FUNCTIONS  # the shim is gone once loading is done
    model = engine._drafter_model
    vocab = engine.vocab_size
    assert model.config.mask_token_id == vocab  # the extension's mask token, read from the drafter's tokenizer
    drafter = engine._drafters["diffuspec"]()
    assert isinstance(drafter, MaskedDiffusionDrafter) and drafter.shifted and drafter._model.use_cache
    context = torch.tensor(engine.tokenizer(PROMPT)["input_ids"])
    k, n = 5, context.numel()
    expected = model(torch.cat([context, torch.full((k,), vocab)])[None]).logits[0, n - 1:n + k - 1]
    assert torch.equal(drafter.propose(context, k).logprobs.argmax(-1), expected.argmax(-1))  # t predicts t + 1
    prompt = context.tolist()
    assert engine.generate(prompt, max_new_tokens=NEW_TOKENS).token_ids == hf_greedy(engine.target, prompt, NEW_TOKENS)


def test_ids_only_the_drafter_has_are_never_proposed(checkpoints):
    """Dream's mask id lies past the target's vocabulary; a drafter that favours it everywhere still only ever
    puts target ids before the target."""
    engine = load(checkpoints, "dream", draft_length=4, cps=False)
    vocab = engine.vocab_size
    with torch.no_grad():
        engine._drafter_model.lm_head.weight[vocab] = 10.0 * engine._drafter_model.lm_head.weight.abs().max()
    seen = []
    hook = engine.target.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["input_ids"].max()),
                                                   with_kwargs=True)
    try:
        prompt = engine.tokenizer(PROMPT)["input_ids"]
        out = engine.generate(prompt, max_new_tokens=16)
    finally:
        hook.remove()
    assert out.token_ids == hf_greedy(engine.target, prompt, 16)
    assert max(seen) < vocab and out.stats.drafted_tokens > 0


def test_llada_runs_without_a_prefix_cache(checkpoints):
    engine = load(checkpoints, "llada")
    model = engine._drafter_model
    with pytest.raises(AssertionError, match="kvcache"):  # the contract the replica honours
        model(torch.tensor([[5, 6]]), use_cache=True)
    drafter = engine._drafters["diffuspec"]()
    assert not drafter.shifted and not drafter._model.use_cache  # unshifted; prefix cache switched off by itself
    prompt = engine.tokenizer(PROMPT)["input_ids"]
    assert engine.generate(prompt, max_new_tokens=NEW_TOKENS).token_ids == hf_greedy(engine.target, prompt, NEW_TOKENS)


def test_a_drafter_with_its_own_tokenizer_drafts_through_text(checkpoints):
    engine = load(checkpoints, "llada-bpe", draft_length=4)
    assert isinstance(engine._drafter_model, DrafterWithTokenizer)
    prompt = engine.tokenizer(PROMPT)["input_ids"]
    out = engine.generate(prompt, max_new_tokens=NEW_TOKENS)
    assert out.token_ids == hf_greedy(engine.target, prompt, NEW_TOKENS)
    assert out.stats.drafted_tokens > 0
    assert same_samples_as_the_target_alone(engine, prompt)


class ContinuationDrafter(Drafter):
    """Drafts, in its own tokenizer, how a known sentence goes on after the context."""

    def __init__(self, tokenizer, sentence: str) -> None:
        self.sentence_ids = tokenizer(sentence)["input_ids"]

    def propose(self, context, k, sampling=None, generator=None) -> Draft:
        n = context.numel()
        assert self.sentence_ids[:n] == context.tolist()
        return Draft(tokens=torch.tensor(self.sentence_ids[n:n + k]))


def test_text_translation_maps_a_draft_onto_target_tokens(tokenizer):
    """A BPE drafter's tokens for " over the lazy dog" become the character target's tokens for that text."""
    bpe = bpe_tokenizer()
    sentence = TEXT[0]
    bridge = TextTranslatingDrafter(ContinuationDrafter(bpe, sentence), bpe, tokenizer,
                                    target_vocab_size=len(tokenizer), target_eos_ids={1})
    context = torch.tensor(tokenizer("the quick brown fox jumps")["input_ids"])
    draft = bridge.propose(context, 12)
    assert tokenizer.decode(draft.tokens.tolist()) == " over the la"


def test_the_text_bridge_is_exact_for_a_drafter_that_is_the_target(tokenizer, prompt):
    """The target drafting for itself through the text round trip: every draft is accepted whole."""
    target = make_target("llama", len(tokenizer))
    engine = DiffuSpec(target, None, tokenizer, DiffuSpecConfig(mode="ar-drafter", draft_length=4),
                       ar_drafter=DrafterWithTokenizer(target, tokenizer))
    out = engine.generate(prompt, max_new_tokens=32)
    assert out.token_ids == hf_greedy(target, prompt, 32)
    assert out.stats.acceptance_rate == 1.0
