"""The training pipeline: data synthesis and chat template, the distillation set, objectives, and a
minutes-long end-to-end run of train-demo on a tiny corpus."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from diffuspec import DiffuSpec
from diffuspec.chat import format_chat, parse_tool_calls
from diffuspec.loading import CPS_NGRAM_FILE, EMBEDDED_DIR
from diffuspec.training import (
    CHAT_TEMPLATE,
    PRESETS,
    DistillationSet,
    align_drafter,
    build_ar_model,
    build_diffusion_model,
    causal_lm_loss,
    fit,
    greedy_continuations,
    random_windows,
    repeat_copy_accuracy,
    repeated_sequences,
    stdlib_corpus,
    stdlib_facts,
    streak_loss,
    synthesize,
    token_stream,
    train_demo,
    train_tokenizer,
)
from diffuspec.training.chat_data import TOOL_REQUESTS, heldout, render, schema_heldout


@pytest.fixture(scope="module")
def facts():
    return stdlib_facts()


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_DIR / "target")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def test_synthesis_is_seeded_and_held_out_material_never_trains(facts):
    assert len(facts) > 500 and any(f.source for f in facts)
    train = synthesize(facts, 300, seed=1)
    assert [c.messages for c in train] == [c.messages for c in synthesize(facts, 300, seed=1)]
    assert [c.messages for c in train] != [c.messages for c in synthesize(facts, 300, seed=2)]
    evaluation = synthesize(facts, 300, seed=1, split="eval")
    for conversations, held in ((train, False), (evaluation, True)):
        for c in conversations:
            assert all(schema_heldout(t) == held for t in c.tools or [])
            if c.kind == "rag" and "answerable" not in c.extra:  # retrieved docstrings: held-in or held-out modules only
                names = [line.split("]")[0][1:] for line in c.context.split("\n\n")]
                assert all(heldout(name.split(".")[0]) == held for name in names)
    held_phrasings = {p.split("{")[0] for p in TOOL_REQUESTS[-2:]}
    train_requests = [c.messages[-2]["content"] for c in train if c.kind == "tool"]
    assert train_requests and not any(r.startswith(tuple(held_phrasings)) for r in train_requests)


class _Copier(torch.nn.Module):
    """Predicts, at each position, the token that followed the previous occurrence of the current token: the
    induction-head behaviour the copy check looks for, built by hand."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size, self.device = vocab_size, torch.device("cpu")

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        for row, tokens in enumerate(input_ids.tolist()):
            for t, token in enumerate(tokens):
                earlier = [s for s in range(t) if tokens[s] == token]
                if earlier:
                    logits[row, t, tokens[earlier[-1] + 1]] = 1.0
        return type("Output", (), {"logits": logits})


def test_open_requests_come_after_the_other_prompts_as_plain_user_turns(chat_tokenizer):
    """A recipe with open requests keeps every earlier prompt in place (so their cached rows are reused) and adds
    seeded user turns, different in the held-out split, that stop at the end of the target's answer."""
    from diffuspec.training.target_text import distillation_prompts

    def prompts(requests: int, split: str = "train") -> list:
        return distillation_prompts(chat_tokenizer, raw=4, chat=6, seed=0, split=split, corpus_bytes=1_000_000,
                                    requests=requests)

    plain, more = prompts(0), prompts(5)
    assert more[: len(plain)] == plain and [kind for kind, _ in more[len(plain):]] == ["chat:open"] * 5
    assert more == prompts(5)
    assert prompts(5, "eval")[-5:] != more[-5:]
    text = chat_tokenizer.decode(more[-1][1])
    assert text.count("user") == 1 and "system" not in text  # one user turn, no system prompt


def test_repeat_copy_accuracy_tells_a_copier_from_a_model_that_cannot_copy(chat_tokenizer):
    assert repeat_copy_accuracy(_Copier(len(chat_tokenizer)), chat_tokenizer) > 0.95
    model = build_ar_model(PRESETS["tiny"].target, chat_tokenizer, 128)  # random weights: no induction heads
    assert repeat_copy_accuracy(model, chat_tokenizer) < 0.05


def test_repeated_sequences_learn_only_the_predictable_repeat():
    ids = torch.arange(100, 400)
    tokens, learn = repeated_sequences(ids, rows=8, length=24, longest=8, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == learn.shape == (8, 24) and bool(torch.isin(tokens, ids).all())
    for row, (t, mask) in enumerate(zip(tokens, learn)):
        span = int(mask.sum()) + 1  # the repeat's first token cannot be predicted, so it is not learnt
        assert 4 <= span <= 8 and bool(mask[24 - span + 1 :].all())
        assert torch.equal(t[24 - span :], t[24 - 2 * span : 24 - span])
        if row % 4 == 0:  # the 16-token alphabet rows
            assert t.unique().numel() <= 16
    few, _ = repeated_sequences(torch.arange(10, 40), 4, 16, 6, torch.Generator())  # fewer tokens than alphabets
    assert bool(torch.isin(few, torch.arange(10, 40)).all())


def test_tool_call_targets_parse_back(facts, chat_tokenizer):
    conversations = [c for c in synthesize(facts, 200, seed=3) if c.expected_call and c.kind != "json"]  # json: bare
    assert len(conversations) > 30
    for c in conversations:
        answer = render(chat_tokenizer, c, tokenize=False).rsplit("<|assistant|>\n", 1)[1]
        _, calls = parse_tool_calls(answer.replace(chat_tokenizer.eos_token, ""))
        assert [(x["name"], x["args"]) for x in calls] == [(c.expected_call["name"], c.expected_call["arguments"])]


def test_chat_template_renders_tools_tool_messages_and_ends_turns_with_eos(chat_tokenizer):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
    }}]
    messages = [
        {"role": "user", "content": "Use the get_weather tool with city Oslo and days 2."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}}]},
        {"role": "tool", "name": "get_weather", "content": "rain"},
        {"role": "assistant", "content": "It is rain."},
    ]
    text = chat_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    assert '{"name": "get_weather", "arguments": {"city": "string", "days": "integer"}} Get the weather.' in text
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}</tool_call><|endoftext|>' in text
    assert "<|tool|> get_weather\nrain\n" in text
    out = chat_tokenizer.apply_chat_template(messages, tools=tools, return_dict=True, return_assistant_tokens_mask=True)
    ids, learn = out["input_ids"], out["assistant_masks"]
    ends = [i for i in range(len(ids)) if learn[i] and (i + 1 == len(ids) or not learn[i + 1])]
    assert len(ends) == 2 and all(ids[i] == chat_tokenizer.eos_token_id for i in ends)  # each turn stops at EOS
    prompt = format_chat(chat_tokenizer, messages[:1], tools, tool_choice="get_weather")
    assert chat_tokenizer.decode(prompt).endswith("You must call the get_weather tool.\n<|user|>\n"
                                                  "Use the get_weather tool with city Oslo and days 2.\n<|assistant|>\n")


def test_distillation_set_windows_and_blocks_stay_inside_rows():
    prompts, continuations = [[5, 6, 7], [8], [9, 10, 11, 12, 13]], [[20, 21, 0], [22, 23, 24, 25], [26, 27]]
    data = DistillationSet.build(prompts, continuations, pad_id=1, context=4)
    assert data.tokens[2].tolist() == [10, 11, 12, 13, 26, 27]  # the prompt's last 4 tokens kept
    gen = torch.Generator().manual_seed(0)
    rows = torch.tensor([0, 1, 2, 1])
    tokens, valid, continuation = data.windows(rows, 5, gen)
    assert tokens[1].tolist() == [8, 22, 23, 24, 25] and continuation[1].tolist() == [False, True, True, True, True]
    assert valid[0].tolist() == [True] * 5 and tokens[0].tolist() in ([5, 6, 7, 20, 21], [6, 7, 20, 21, 0])
    ctx, ctx_valid, blk, blk_valid = data.blocks(rows, 3, 4, gen)
    for r, row in enumerate(rows.tolist()):
        context = ctx[r][ctx_valid[r]].tolist()
        full = data.tokens[row, : data.lengths[row]].tolist()
        cut = len(context) if len(full) <= 4 else full.index(context[0]) + len(context)
        assert full[cut - len(context) : cut] == context and cut >= data.prompt_lens[row]
        assert blk[r][blk_valid[r]].tolist() == full[cut : cut + 3]


def test_losses_fall_and_alignment_raises_acceptance():
    recipe = PRESETS["tiny"]
    train, _, _ = stdlib_corpus(recipe.corpus_bytes, recipe.heldout_every)
    tokenizer = train_tokenizer(train, recipe.vocab_size)
    stream = token_stream(tokenizer, train)
    gen = torch.Generator().manual_seed(0)
    target = build_ar_model(recipe.target, tokenizer, recipe.context)
    lm = fit(target, lambda s: causal_lm_loss(target, random_windows(stream, 8, 64, gen)), 60, 5e-3, "t")
    assert sum(lm[-10:]) < sum(lm[:10])
    prompts = [w[: 8 + i % 16] for i, w in enumerate(random_windows(stream, 64, 24, gen).tolist())]  # varied
    continuations = greedy_continuations(target, prompts, 8)
    assert all(len(c) == 8 for c in continuations)
    data = DistillationSet.build(prompts, continuations, tokenizer.pad_token_id, context=24)
    drafter = build_diffusion_model(recipe.drafter, tokenizer, recipe.context)
    mask = tokenizer.mask_token_id

    def streak() -> float:
        ctx, ctx_valid, blk, blk_valid = data.blocks(torch.arange(64), 8, 24, torch.Generator().manual_seed(1))
        with torch.no_grad():
            return streak_loss(drafter, ctx, blk, mask, prefix_valid=ctx_valid, block_valid=blk_valid)[1]

    before = streak()
    losses, _ = align_drafter(drafter, data, mask, steps=60, lr=5e-3, batch_size=16, block=8, min_block=4,
                              generator=gen)
    assert sum(losses[-10:]) < sum(losses[:10])
    assert streak() > before + 0.5  # expected accepted streak on the verifier's own continuations


def test_train_demo_tiny_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSPEC_CACHE", str(tmp_path / "cache"))
    metrics = train_demo(tmp_path / "demo", PRESETS["tiny"], device="cpu")
    out = tmp_path / "demo"
    for role in ("target", "drafter", "ar_drafter"):
        assert (out / role / "model.safetensors").exists() and (out / role / "README.md").exists()
    assert (out / "training_curves.png").stat().st_size > 10_000
    assert (out / "drafter" / CPS_NGRAM_FILE).exists()
    assert "target: chat fine-tune loss" in metrics["curves"]
    assert set(metrics["greedy_acceptance_after_alignment"]) == {"diffuspec", "diffuspec-no-cps", "ar-drafter"}
    assert metrics["chat"]["conversations"] == PRESETS["tiny"].eval_chat and metrics["short_prompts"]["prompts"] == 32
    engine = DiffuSpec.from_pretrained(str(out / "target"), str(out / "drafter"), ar_drafter=str(out / "ar_drafter"))
    assert engine.tokenizer.chat_template == CHAT_TEMPLATE
    chat_prompt = json.loads((out / "chat_prompts.jsonl").read_text().splitlines()[0])["prompt"]
    for prompt in ("import", chat_prompt):
        assert engine.generate(prompt, 16).token_ids == engine.generate(prompt, 16, mode="ar").token_ids
    # the base target went to the cache, and a second build can start from it
    assert any((tmp_path / "cache").glob("demo-base-target-*/model.safetensors"))


def test_align_command_on_saved_models(tmp_path, targets, drafter, tokenizer):
    from diffuspec.cli import main

    targets["llama"].save_pretrained(tmp_path / "target")
    drafter.save_pretrained(tmp_path / "drafter")
    for name in ("target", "drafter"):
        tokenizer.save_pretrained(tmp_path / name)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the quick brown fox jumps over\nsome other words here, and more\n")
    args = ["align", "--target", str(tmp_path / "target"), "--drafter", str(tmp_path / "drafter"),
            "--prompts", str(prompts), "--out", str(tmp_path / "aligned"), "--steps", "3", "--block", "4",
            "--batch-size", "2", "--device", "cpu"]
    assert main(args + ["--prompt-tokens", "8"]) == 0
    engine = DiffuSpec.from_pretrained(str(tmp_path / "target"), str(tmp_path / "aligned"))
    assert engine.cps_ngram is not None and engine.cps_ngram.order == 5  # written beside the drafter
    assert engine.generate("abc", max_new_tokens=8).token_ids == engine.generate("abc", max_new_tokens=8, mode="ar").token_ids
    assert main(args + ["--prompt-tokens", "500"]) == 2  # no prompt that long: a clear error
