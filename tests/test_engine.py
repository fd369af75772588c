"""The decoding loop against transformers' own greedy decoding, token for token."""

import copy

import pytest
import torch
from tiny_models import CONTEXT, hf_greedy, make_diffusion_drafter

from diffuspec import ARDrafter, DiffuSpec, DiffuSpecConfig, DiffuSpecError, Draft, Drafter
from diffuspec.path_search import CorpusNGram

PROMPTS = ["the quick brown fox jumps", "a, b. c", "zzz"]


class OffByOneDrafter(Drafter):
    """Wraps the target's own greedy drafts and shifts every token: the target rejects them all."""

    def __init__(self, target, vocab_size):
        self.oracle, self.vocab_size = ARDrafter(target), vocab_size

    def reset(self):
        self.oracle.reset()

    def propose(self, context, k, sampling=None, generator=None):
        draft = self.oracle.propose(context, k)
        return Draft(tokens=(draft.tokens + 1) % self.vocab_size, forwards=draft.forwards)


@pytest.fixture(scope="module")
def shifted_drafter(tokenizer):
    return make_diffusion_drafter(len(tokenizer), seed=7)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma3"])
@pytest.mark.parametrize("drafter_kind", ["unshifted", "shifted"])
@pytest.mark.parametrize("cps", [True, False])
@pytest.mark.parametrize("draft_length", [None, 5])
def test_greedy_equals_target_generate(targets, drafter, shifted_drafter, tokenizer, arch, drafter_kind, cps, draft_length):
    target = targets[arch]
    model = drafter if drafter_kind == "unshifted" else shifted_drafter
    config = DiffuSpecConfig(cps=cps, draft_length=draft_length, logits_shift=drafter_kind == "shifted")
    engine = DiffuSpec(target, model, tokenizer, config)
    for prompt in PROMPTS[:2]:
        ids = tokenizer(prompt)["input_ids"]
        out = engine.generate(prompt, max_new_tokens=40)
        assert out.token_ids == hf_greedy(target, ids, 40)
        assert out.text == tokenizer.decode(out.token_ids, skip_special_tokens=True)
        assert out.stats.new_tokens == len(out.token_ids)
        assert out.stats.target_forwards == out.stats.steps + 1  # prefill + one pass per step


def test_corpus_ngram_proxy_stays_lossless_and_steers_the_path(targets, drafter, tokenizer):
    target = targets["gpt2"]
    ids = tokenizer(PROMPTS[0])["input_ids"]
    reference = hf_greedy(target, ids, 40)
    # A table counted on the target's own output: the proxy now knows where the text goes.
    table = CorpusNGram.count(torch.tensor([ids + reference]), len(tokenizer), order=4, start=len(ids), min_count=1)
    # CPS on every step (the cost policy may switch it off), every draft the drafter's (no prompt lookup)
    config = DiffuSpecConfig(length_policy="adl", prompt_lookup_first=False)
    plain = DiffuSpec(target, drafter, tokenizer, config)
    engine = DiffuSpec(target, drafter, tokenizer, config, cps_ngram=table)
    out = engine.generate(ids, max_new_tokens=40)
    assert out.token_ids == reference
    assert out.stats.accepted_tokens > plain.generate(ids, max_new_tokens=40).stats.accepted_tokens
    assert engine.with_config(cps=False).generate(ids, max_new_tokens=40).token_ids == reference


def test_corpus_ngram_of_another_vocabulary_is_refused(targets, drafter, tokenizer):
    table = CorpusNGram.count(torch.tensor([[1, 2, 3]]), len(tokenizer) + 5, order=2)
    with pytest.raises(DiffuSpecError, match="another tokenizer"):
        DiffuSpec(targets["llama"], drafter, tokenizer, cps_ngram=table)


@pytest.mark.parametrize("mode", ["ar", "prompt-lookup", "ar-drafter"])
def test_every_mode_is_lossless(targets, drafter, tokenizer, mode):
    target = targets["llama"]
    engine = DiffuSpec(target, drafter, tokenizer, ar_drafter=targets["qwen2"])
    ids = tokenizer(PROMPTS[0])["input_ids"]
    out = engine.generate(ids, max_new_tokens=60, mode=mode)
    assert out.token_ids == hf_greedy(target, ids, 60)
    if mode == "ar":
        assert out.stats.steps == len(out.token_ids) and out.stats.drafted_tokens == 0


@pytest.mark.parametrize("options", [dict(drafter_prefix_cache=True), dict(denoising_steps=3, draft_length=4)])
def test_drafter_options_stay_lossless(targets, drafter, tokenizer, options):
    target = targets["qwen2"]
    engine = DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(**options, prompt_lookup_first=False))
    for prompt in PROMPTS:
        out = engine.generate(prompt, max_new_tokens=50)
        assert out.token_ids == hf_greedy(target, tokenizer(prompt)["input_ids"], 50)
    if options.get("denoising_steps"):
        drafting = sum(1 for k in out.stats.draft_lengths if k > 0)  # the steps that drafted (others: plain steps)
        assert drafting and out.stats.drafter_forwards > drafting


def test_long_generation_with_many_rollbacks(targets, drafter, tokenizer):
    target = targets["gpt2"]
    engine = DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(draft_length=6))
    ids = tokenizer("x")["input_ids"]
    out = engine.generate(ids, max_new_tokens=CONTEXT)
    reference = hf_greedy(target, ids, CONTEXT - len(ids))
    assert out.token_ids == reference
    assert out.finish_reason in ("eos", "length")
    assert sum(a < d for a, d in zip(out.stats.accepted_lengths, out.stats.draft_lengths)) > 10  # rollbacks


def test_always_agreeing_drafter_accepts_everything(targets, tokenizer):
    target = targets["llama"]
    engine = DiffuSpec(target, ARDrafter(target), tokenizer, DiffuSpecConfig(draft_length=5, prompt_lookup_first=False))
    ids = tokenizer(PROMPTS[1])["input_ids"]
    out = engine.generate(ids, max_new_tokens=30)
    assert out.token_ids == hf_greedy(target, ids, 30)
    s = out.stats
    assert s.acceptance_rate == 1.0 and s.mean_accepted_tokens == pytest.approx(s.drafted_tokens / s.steps)
    assert s.per_position_acceptance == [1.0] * 5


def test_never_agreeing_drafter_still_decodes(targets, tokenizer):
    target = targets["llama"]
    engine = DiffuSpec(target, OffByOneDrafter(target, len(tokenizer)), tokenizer,
                       DiffuSpecConfig(draft_length=4, prompt_lookup_first=False))
    ids = tokenizer(PROMPTS[0])["input_ids"]
    out = engine.generate(ids, max_new_tokens=30)
    assert out.token_ids == hf_greedy(target, ids, 30)
    assert out.stats.accepted_tokens == 0 and out.stats.steps == len(out.token_ids)


def test_eos_inside_a_drafted_block(targets, tokenizer):
    target = copy.deepcopy(targets["qwen2"])
    ids = tokenizer(PROMPTS[0])["input_ids"]
    free_run = hf_greedy(target, ids, 40, eos=-1)
    eos = free_run[12]  # make a token the target will produce mid-stream its EOS
    target.generation_config.eos_token_id = eos
    engine = DiffuSpec(target, ARDrafter(target), tokenizer, DiffuSpecConfig(draft_length=8))
    out = engine.generate(ids, max_new_tokens=40)
    assert out.token_ids == hf_greedy(target, ids, 40, eos=eos)
    assert out.finish_reason == "eos" and out.token_ids[-1] == eos
    assert out.stats.draft_lengths[-1] == 8 and out.token_ids.count(eos) == 1


def test_stop_string_spanning_blocks(targets, drafter, tokenizer):
    target = targets["llama"]
    engine = DiffuSpec(target, ARDrafter(target), tokenizer, DiffuSpecConfig(draft_length=4))
    prompt = PROMPTS[0]
    full = engine.generate(prompt, max_new_tokens=40)
    # A stop string that starts in one committed block and ends in the next.
    ends = [len(e) for e in _cumulative_texts(engine.stream(prompt, max_new_tokens=40))]
    boundary = next(b for b in ends if 2 <= b <= len(full.text) - 2 and full.text.index(full.text[b - 2 : b + 2]) == b - 2)
    stop = full.text[boundary - 2 : boundary + 2]
    events = list(engine.stream(prompt, max_new_tokens=40, stop=[stop, "never"]))
    streamed = "".join(e.text for e in events)
    expected = full.text[: boundary - 2]
    assert streamed == expected and stop not in streamed
    assert events[-1].finish_reason == "stop"
    result = engine.generate(prompt, max_new_tokens=40, stop=stop)
    assert result.text == expected and result.finish_reason == "stop"


def _cumulative_texts(events):
    text = ""
    for event in events:
        text += event.text
        yield text


@pytest.mark.parametrize("policy", ["cost", "adl"])
def test_stream_events_add_up(targets, drafter, tokenizer, policy):
    engine = DiffuSpec(targets["gpt2"], drafter, tokenizer, DiffuSpecConfig(length_policy=policy))
    events = list(engine.stream(PROMPTS[0], max_new_tokens=50))
    final = engine.generate(PROMPTS[0], max_new_tokens=50)
    assert "".join(e.text for e in events) == final.text
    assert [t for e in events for t in e.token_ids] == final.token_ids
    last = events[-1].stats
    assert [e.draft_length for e in events] == list(last.draft_lengths)
    assert [e.accepted for e in events] == list(last.accepted_lengths)
    assert [e.stats.steps for e in events] == list(range(1, len(events) + 1))  # each event its own snapshot
    assert all(e.finish_reason is None for e in events[:-1]) and events[-1].finish_reason
    assert last.draft_lengths[0] == engine.config.k_max  # both policies start with a full-length draft
    assert sum(final.stats.seconds.values()) <= final.stats.wall_seconds * 1.01


def test_length_limit(targets, drafter, tokenizer):
    engine = DiffuSpec(targets["llama"], ARDrafter(targets["llama"]), tokenizer, DiffuSpecConfig(draft_length=8))
    for n in (1, 2, 9, 10):
        out = engine.generate("abc", max_new_tokens=n)
        assert len(out.token_ids) <= n
        if out.finish_reason == "length":
            assert len(out.token_ids) == n


def test_abandoned_stream_frees_the_engine(targets, drafter, tokenizer):
    engine = DiffuSpec(targets["llama"], drafter, tokenizer)
    stream = engine.stream(PROMPTS[0], max_new_tokens=100)
    next(stream)
    assert engine.generate("abc", max_new_tokens=5).token_ids  # waits its turn: no deadlock in one thread
    stream.close()
    assert engine.scheduler.wait_idle(30)
    stream = engine.stream(PROMPTS[0], max_new_tokens=100)
    next(stream)
    del stream  # dropped without close(): the generator is finalised
    assert engine.scheduler.wait_idle(30)
    assert engine.generate("abc", max_new_tokens=5).token_ids


def test_from_pretrained_local_paths(tmp_path, targets, drafter, tokenizer):
    for name, model in [("target", targets["llama"]), ("drafter", drafter)]:
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    engine = DiffuSpec.from_pretrained(str(tmp_path / "target"), str(tmp_path / "drafter"), device="cpu")
    ids = tokenizer(PROMPTS[0])["input_ids"]
    assert engine.generate(ids, max_new_tokens=30).token_ids == hf_greedy(targets["llama"], ids, 30)


def test_sampling_is_reproducible_with_seed(targets, drafter, tokenizer):
    engine = DiffuSpec(targets["llama"], drafter, tokenizer)
    a = engine.generate("abc", max_new_tokens=30, temperature=1.0, seed=3)
    b = engine.generate("abc", max_new_tokens=30, temperature=1.0, seed=3)
    assert a.token_ids == b.token_ids
    # Gumbel-max verification: the seed fixes every sampled token, whatever the drafts were
    fixed = engine.with_config(draft_length=3).generate("abc", max_new_tokens=30, temperature=1.0, seed=3)
    alone = engine.generate("abc", max_new_tokens=30, temperature=1.0, seed=3, mode="ar")
    assert fixed.token_ids == a.token_ids == alone.token_ids
    assert torch.is_tensor(torch.tensor(a.token_ids))


def test_slow_async_consumer_sees_each_steps_own_figures(targets, drafter, tokenizer):
    """Events are snapshots: the worker thread runs ahead of a slow consumer without changing what it reads."""
    import asyncio

    engine = DiffuSpec(targets["llama"], drafter, tokenizer, DiffuSpecConfig(draft_length=3))

    async def slowly():
        seen = []
        async for event in engine.astream("abc", max_new_tokens=30):
            await asyncio.sleep(0.02)  # the worker has taken more steps by now
            seen.append((event.stats.steps, event.stats.new_tokens, len(event.token_ids)))
        return seen

    seen = asyncio.run(slowly())
    assert [steps for steps, _, _ in seen] == list(range(1, len(seen) + 1))
    running = 0
    for _, new_tokens, committed in seen:
        running += committed
        assert new_tokens == running


def test_the_prefill_computes_only_the_logits_it_reads(targets, tokenizer):
    """The prompt's pass keeps the last position's logits only (the rest are never read; with a 262k-token head
    they would cost more than the rest of the pass); every later pass scores every position it verifies."""
    target = targets["llama"]
    rows = []
    hook = target.get_output_embeddings().register_forward_hook(lambda module, args, out: rows.append(out.shape[1]))
    try:
        ids = tokenizer(PROMPTS[0])["input_ids"]
        out = DiffuSpec(target, None, tokenizer, DiffuSpecConfig(mode="ar")).generate(ids, max_new_tokens=3)
    finally:
        hook.remove()
    assert len(ids) > 2 and rows == [1, 1, 1, 1] and out.token_ids == hf_greedy(target, ids, 3)
