"""The verification cache: plain full-attention layers live in preallocated buffers (``BufferedLayer``); a forward
through them computes exactly what transformers' ``DynamicCache`` does, through growth, rollbacks and a tree
compaction, and a rollback moves no data."""

import pytest
import torch
from tiny_models import PAD, _init, make_target
from transformers import DynamicCache, Gemma3ForCausalLM, Gemma3TextConfig
from transformers.cache_utils import DynamicSlidingWindowLayer

from diffuspec.caches import BufferedLayer, cache_kwargs, new_cache, rollback
from diffuspec.tree import compact_cache

VOCAB = 32


def _reference_cache(model) -> DynamicCache:
    cache = DynamicCache(config=model.config)
    cache.activate_past_recording()
    return cache


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@torch.inference_mode()
def test_a_buffered_cache_computes_what_the_dynamic_cache_does(arch):
    model = make_target(arch, VOCAB)
    buffered, reference = new_cache(model), _reference_cache(model)
    assert all(type(layer) is BufferedLayer for layer in buffered.layers)
    g = torch.Generator().manual_seed(0)
    # prefill, then verification-like steps: feeds of 1..33 tokens (the buffers grow several times), rejected
    # tails rolled back, and once a tree-style compaction that keeps some positions out of order
    script = [(40, 0), (1, 0), (5, 3), (17, 16), (33, 2), (2, 1), (9, 9), ("compact", None), (3, 0), (33, 30)]
    for size, drop in script:
        if size == "compact":
            past = buffered.get_seq_length() - 6
            for cache in (buffered, reference):
                compact_cache(cache, past, [1, 3, 4])
            continue
        feed = torch.randint(4, VOCAB, (1, size), generator=g)
        logits = [model(input_ids=feed, use_cache=True, **cache_kwargs(model, cache)).logits
                  for cache in (buffered, reference)]
        assert torch.equal(*logits)
        for cache in (buffered, reference):
            rollback(cache, drop)
        assert buffered.get_seq_length() == reference.get_seq_length()
        for mine, theirs in zip(buffered.layers, reference.layers):
            assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)


@torch.inference_mode()
def test_a_rollback_moves_no_data_and_a_forward_writes_in_place():
    model = make_target("llama", VOCAB)
    cache = new_cache(model)
    model(input_ids=torch.full((1, 20), 5), use_cache=True, **cache_kwargs(model, cache))
    layer = cache.layers[0]
    buffer, room = layer.key_buffer, layer.key_buffer.shape[-2]
    assert room >= 2 * 20  # geometric: room to spare, not one allocation per step
    rollback(cache, 4)
    assert layer.keys.data_ptr() == buffer.data_ptr() and layer.get_seq_length() == 16
    model(input_ids=torch.full((1, 7), 6), use_cache=True, **cache_kwargs(model, cache))
    assert layer.key_buffer is buffer and layer.keys.shape[-2] == 23  # written in place, returned as a view
    model(input_ids=torch.full((1, room), 7), use_cache=True, **cache_kwargs(model, cache))
    assert layer.key_buffer.shape[-2] >= 2 * (23 + room)  # grown when full
    assert torch.equal(layer.keys[..., :23, :], buffer[..., :23, :])  # with what it held


def test_only_plain_full_attention_layers_are_buffered():
    config = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=8, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"], pad_token_id=PAD,
                              bos_token_id=None, eos_token_id=1)
    layers = new_cache(_init(Gemma3ForCausalLM(config), seed=0, scale=0.3)).layers
    assert [type(layer) for layer in layers] == [DynamicSlidingWindowLayer, BufferedLayer]


# ----- drafter caches against recomputation (a drafter's cache only changes drafts: no output test sees it) -------

CONTEXT_IDS = torch.randint(4, VOCAB, (40,), generator=torch.Generator().manual_seed(1))
GROWING = (5, 13, 21, 40)  # a request's committed context, growing past the window (8) of the sliding layers


@torch.inference_mode()
def test_the_diffusion_gemma_encoder_cache_holds_what_transformers_own_cache_holds():
    """After each draft, the drafter's recording cache holds what a plain ``DynamicCache`` holds once the same
    context is encoded in one pass (a sliding layer: its last W - 1 keys), and its drafts are the ones that cache
    gives: the decoder reads every key a layer holds, so keys left past the window change the drafts."""
    from diffuspec.adapters import DiffusionGemmaDrafter, tiny_diffusion_gemma_pair

    _, model = tiny_diffusion_gemma_pair(VOCAB)
    drafter = DiffusionGemmaDrafter(model)
    for end in GROWING:
        got = drafter.propose(CONTEXT_IDS[:end], 4, generator=torch.Generator().manual_seed(end)).logprobs
        reference = DynamicCache(config=model.config)  # no recording: transformers trims as it goes
        encoder = model.model.encoder
        encoder(input_ids=CONTEXT_IDS[None, :end], use_cache=True, **cache_kwargs(encoder, reference))
        for mine, theirs in zip(drafter.cache.layers, reference.layers):
            assert mine.keys.shape == theirs.keys.shape, (end, type(mine).__name__)
            torch.testing.assert_close(mine.keys, theirs.keys, atol=1e-5, rtol=1e-5)
        canvas = torch.randint(VOCAB, (1, 4), generator=torch.Generator().manual_seed(end))  # the drafter's canvas
        want = model(decoder_input_ids=canvas, **cache_kwargs(model, reference)).logits[0].float().log_softmax(-1)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _sliding_gemma3(bidirectional: bool):
    config = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=8, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"], pad_token_id=PAD,
                              bos_token_id=None, eos_token_id=1, use_bidirectional_attention=bidirectional)
    return _init(Gemma3ForCausalLM(config), seed=2, scale=0.3)


def _held(cache) -> list[int]:
    return [layer.keys.shape[-2] for layer in cache.layers]


@torch.inference_mode()
def test_an_ar_drafter_cache_holds_the_committed_context_and_drafts_what_recomputation_drafts():
    """Between drafts an AR drafter's cache holds the committed tokens only, trimmed to each layer's window, and
    its greedy drafts are the model's own greedy continuation computed from scratch."""
    from diffuspec.drafters import ARDrafter

    model = _sliding_gemma3(bidirectional=False)
    drafter = ARDrafter(model)
    for end in GROWING:
        context = CONTEXT_IDS[:end]
        draft = drafter.propose(context, 5).tokens
        ids = context[None]
        for _ in range(5):  # the reference: no cache at all
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
        assert draft.tolist() == ids[0, end:].tolist()
        assert drafter._model.cached_ids.tolist() == context.tolist()
        assert _held(drafter._model.cache) == [min(end, 7), end]


@torch.inference_mode()
def test_a_masked_diffusion_drafter_prefix_cache_holds_the_context_trimmed_to_each_window():
    """The prefix cache drops the masked block after each draft and trims its sliding layers to W - 1 keys."""
    from diffuspec.drafters import MaskedDiffusionDrafter

    model = _sliding_gemma3(bidirectional=True)
    window = model.config.sliding_window  # a bidirectional Gemma 3 looks W // 2 each way: 5 here
    drafter = MaskedDiffusionDrafter(model, mask_token_id=2, prefix_cache=True)
    for end in GROWING:
        drafter.propose(CONTEXT_IDS[:end], 6)
        assert drafter._model.cached_ids.tolist() == CONTEXT_IDS[:end].tolist()
        assert _held(drafter._model.cache) == [min(end, window - 1), end]
