"""prepare_target's kernels: float32 products on oneDNN's layout, and the row-exact int8 target (lossless)."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import MASK, _init, hf_greedy, make_target
from torch import nn

from diffuspec import ARDrafter, DiffuSpec, DiffuSpecConfig, DiffuSpecError
from diffuspec.caches import new_cache, rollback
from diffuspec.fast_linear import MIN_ROWS, PackedLinear, pad_rows
from diffuspec.loop import _verify
from diffuspec.adapters.block_drafter import block_drafter_from_target
from diffuspec.loading import load_models
from diffuspec.precision import (check_precision_device, checked_precision, prepare_target, resolved_precision,
                                 target_precision)
from diffuspec.presets import PRESETS
from diffuspec.row_exact_attention import row_exact_attention, visible_keys
from diffuspec.row_exact_int8 import RowExactInt8Linear, activation_levels, quantize_rows, quantize_weight

PROMPTS = ["the quick brown fox jumps", "a, b. c"]


def test_pad_rows_appends_zero_rows_up_to_the_minimum():
    rows = torch.tensor([[1.0, 2.0]])
    assert torch.equal(pad_rows(rows, 3), torch.tensor([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]))
    assert pad_rows(rows, 1) is rows


def test_quantize_rows_scales_each_row_by_its_own_largest_value():
    rows = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [10.0, 3.0, -7.0]])
    q, scale = quantize_rows(rows, 4)
    assert torch.equal(scale, torch.tensor([[0.5], [1.0], [2.5]]))
    assert torch.equal(q, torch.tensor([[2.0, -4.0, 1.0], [0.0, 0.0, 0.0], [4.0, 1.0, -3.0]]))


def test_quantize_weight_is_symmetric_per_output_channel():
    weight = torch.tensor([[127.0, -63.5], [0.0, 0.0], [-2.54, 1.27]])
    q, scale = quantize_weight(weight)
    assert q.dtype == torch.int8
    assert torch.equal(q, torch.tensor([[127, -64], [0, 0], [-127, 64]], dtype=torch.int8))
    assert torch.allclose(scale, torch.tensor([1.0, 1.0, 0.02]))


def _rows(n: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, width, generator=g)
    rows[:, 3] *= 40  # an outlier channel, as transformer activations have
    return rows


@pytest.mark.parametrize("block", [2, 5, 16, 33])
def test_int8_rows_are_exact_alone_or_in_a_block(block):
    linear = nn.Linear(320, 1536, bias=True)
    layer = RowExactInt8Linear.from_linear(linear)
    rows = _rows(block, 320, seed=block)
    together = layer(rows)
    alone = torch.cat([layer(rows[i : i + 1]) for i in range(block)])
    assert torch.equal(together, alone)  # bit for bit: nothing but the row itself enters its result
    # and the product is the exact integer one, scaled
    q_w, w_scale = quantize_weight(linear.weight)
    q_x, x_scale = quantize_rows(rows, activation_levels())
    exact = (q_x.double() @ q_w.double().t()).float() * w_scale * x_scale + linear.bias
    assert torch.allclose(together, exact, rtol=1e-6, atol=1e-6)


def test_int8_product_stays_close_to_the_float_product():
    linear = nn.Linear(640, 512, bias=False)
    rows = torch.randn(9, 640)
    relative = (RowExactInt8Linear.from_linear(linear)(rows) - linear(rows)).norm() / linear(rows).norm()
    assert relative < 0.02


@pytest.mark.parametrize("block", [1, 2, MIN_ROWS, 17, 33])
def test_packed_linear_computes_nn_linear(block):
    linear = nn.Linear(96, 200, bias=True)
    layer = PackedLinear.from_linear(linear)
    rows = torch.randn(2, block, 96)
    with torch.no_grad():
        assert torch.allclose(layer(rows), linear(rows), rtol=1e-5, atol=1e-5)


def _tiny_gemma(tokenizer):
    return make_target("gemma3", len(tokenizer), seed=11)


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_prepare_swaps_every_linear_and_keeps_the_tied_head_weight(tokenizer, precision):
    model = _tiny_gemma(tokenizer)
    embedding = model.get_input_embeddings().weight
    prepare_target(model, precision)
    assert not [m for m in model.modules() if type(m) is nn.Linear]
    assert model.get_output_embeddings().weight is embedding  # drafters read the head's rows
    assert target_precision(model) == precision
    assert prepare_target(model, precision) is model  # a second identical preparation does nothing


def test_float32_preparation_keeps_what_the_model_computes(tokenizer):
    model = _tiny_gemma(tokenizer)
    ids = torch.tensor([tokenizer("the quick brown fox")["input_ids"]])
    with torch.no_grad():
        before = model(ids).logits
        after = prepare_target(model, "float32")(ids).logits
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("precision", ["float32", "int8"])
@pytest.mark.parametrize("mode", ["diffuspec", "ar-drafter", "prompt-lookup"])
def test_speculative_output_equals_the_prepared_models_own_generate(tokenizer, drafter, precision, mode):
    target = prepare_target(_tiny_gemma(tokenizer), precision)
    # the float original drafts for ar-drafter: mostly accepted, so passes verify long blocks and roll back too
    engine = DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(draft_length=6), ar_drafter=_tiny_gemma(tokenizer))
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        out = engine.generate(ids, max_new_tokens=60, mode=mode)
        assert out.token_ids == hf_greedy(target, ids, 60)
        if mode == "ar-drafter":
            assert out.stats.accepted_tokens > 0


def test_int8_target_drafting_itself_is_accepted_in_full(tokenizer):
    target = prepare_target(_tiny_gemma(tokenizer), "int8")
    engine = DiffuSpec(target, ARDrafter(target), tokenizer, DiffuSpecConfig(draft_length=8))
    ids = tokenizer(PROMPTS[0])["input_ids"]
    out = engine.generate(ids, max_new_tokens=48)
    assert out.token_ids == hf_greedy(target, ids, 48)
    assert out.stats.accepted_tokens == out.stats.drafted_tokens  # its blocks give its one-token logits


def test_bad_preparations_are_refused_with_the_fix(tokenizer):
    with pytest.raises(DiffuSpecError, match="unknown precision 'int4'"):
        prepare_target(_tiny_gemma(tokenizer), "int4")
    with pytest.raises(DiffuSpecError, match="dtype=torch.float32"):
        prepare_target(_tiny_gemma(tokenizer).to(torch.bfloat16), "int8")
    model = prepare_target(_tiny_gemma(tokenizer), "float32")
    with pytest.raises(DiffuSpecError, match="load it again"):
        prepare_target(model, "int8")
    assert prepare_target(_tiny_gemma(tokenizer), None) is not None


def test_visible_keys_reads_each_querys_window_from_the_mask():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [1, 0, 1, 1, 1]], dtype=torch.bool)[None, None]
    seen = visible_keys(mask, q_length=3, kv_length=5, causal=True, batch=1)[0]
    assert seen[:2] == [slice(0, 3), slice(1, 4)]
    assert seen[2].tolist() == [0, 2, 3, 4]  # not contiguous: gathered by index
    assert visible_keys(None, 2, 6, causal=True, batch=1) == [[slice(0, 5), slice(0, 6)]]  # the last keys are theirs
    assert visible_keys(None, 2, 6, causal=False, batch=1) == [[slice(0, 6), slice(0, 6)]]


def test_row_exact_attention_computes_masked_attention():
    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, heads, length, 16, generator=g) for heads, length in ((4, 5), (2, 9), (2, 9)))
    positions = torch.arange(4, 9)
    mask = (torch.arange(9)[None] <= positions[:, None]) & (torch.arange(9)[None] > positions[:, None] - 4)  # window 4
    module = nn.Module()
    got, _ = row_exact_attention(module, query, key, value, mask[None, None], scaling=0.25)
    expected = F.scaled_dot_product_attention(query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1),
                                              attn_mask=mask[None, None], scale=0.25)
    assert torch.allclose(got, expected.transpose(1, 2), atol=1e-6)


def _block_and_alone(model, ids: torch.Tensor, context: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ids[context : context + size] verified in one pass, and the same tokens fed one per pass."""
    cache = new_cache(model)
    with torch.inference_mode():
        _verify(model, cache, ids[:context])
        rollback(cache, 0)
        block, _ = _verify(model, cache, ids[context : context + size])
        rollback(cache, size)
        alone = []
        for i in range(context, context + size):
            alone.append(_verify(model, cache, ids[i : i + 1])[0])
            rollback(cache, 0)
    return block, torch.cat(alone)


def test_int8_target_gives_a_token_the_same_logits_alone_or_in_a_block(tokenizer):
    model = prepare_target(_tiny_gemma(tokenizer), "int8")
    ids = torch.tensor(tokenizer("the quick brown fox jumps over the lazy dog")["input_ids"])
    block, alone = _block_and_alone(model, ids, context=20, size=16)
    assert torch.equal(block, alone)  # bit for bit: a verification pass is 16 one-token steps


@pytest.fixture(scope="module", params=["auto", "float32"])
def prepared_real_engine(request):
    """The default preset on the CPU as loaded by default ("auto": its recommended int8), and packed float32."""
    engine = DiffuSpec.from_pretrained("gemma-3-270m", device="cpu", precision=request.param,
                                       config=DiffuSpecConfig(mode="ar"))
    assert engine.precision == ("int8" if request.param == "auto" else request.param) == target_precision(engine.target)
    return engine


@pytest.mark.slow
def test_real_target_prepared_stays_its_own_greedy_decoding(prepared_real_engine):
    """Gemma 3 270M prepared in place: every mode reproduces the prepared model's own greedy ``generate``, also
    past the 512-token sliding window; int8 verification passes give their tokens' one-token logits bit for bit."""
    engine = prepared_real_engine
    target, tokenizer = engine.target, engine.tokenizer
    passage = " ".join(f"Item {i} costs {i * 7 % 23} euros." for i in range(140))  # about 1,100 tokens
    prompts = [tokenizer("The capital of Peru is")["input_ids"],
               tokenizer(passage + " Question: how much does item 131 cost? Answer:")["input_ids"]]
    assert len(prompts[1]) > 2 * target.config.sliding_window
    for ids in prompts:
        want = hf_greedy(target, ids, 40, eos=sorted(engine.eos_token_ids))  # the tuning's end of turn too
        for mode in engine.modes:
            if mode not in ("dlm", "spiffy"):
                assert engine.generate(ids, max_new_tokens=40, mode=mode).token_ids == want, mode
    if target_precision(target) == "int8":
        block, alone = _block_and_alone(target, torch.tensor(prompts[1]), context=600, size=16)
        assert torch.equal(block, alone)


# ----- precision as a loading argument -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_gemma_pair(tmp_path_factory, tokenizer):
    """A tiny Gemma 3 (sliding layers, tied head) and a block drafter made for it, saved as load_models reads them."""
    folder = tmp_path_factory.mktemp("pair")
    target = make_target("gemma3", len(tokenizer))
    drafter = block_drafter_from_target(target, [2], draft_ids=torch.arange(0, len(tokenizer), 2),
                                        mask_token_id=MASK, block_size=5, copy=False, carry_state=True)
    _init(drafter, 5, scale=0.3).save_pretrained(folder / "drafter")
    target.save_pretrained(folder / "target")
    tokenizer.save_pretrained(folder / "target")
    return str(folder / "target"), str(folder / "drafter")


@pytest.mark.parametrize("precision", ["int8", "float32"])
def test_a_target_loaded_with_a_precision_keeps_its_block_drafter_lossless(saved_gemma_pair, tokenizer, precision):
    """The block drafter borrows the prepared target's embedding, head rows and hidden states; speculative
    decoding reproduces the prepared model's own greedy generate."""
    engine = DiffuSpec.from_pretrained(*saved_gemma_pair, device="cpu", precision=precision,
                                       config=DiffuSpecConfig(cps=False, draft_length=5))
    assert engine.precision == target_precision(engine.target) == precision
    assert not [m for m in engine.target.modules() if type(m) is nn.Linear]
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        out = engine.generate(ids, 30)
        assert out.token_ids == hf_greedy(engine.target, ids, 30)
        assert out.stats.steps < 30  # drafts were accepted: the drafter works on the prepared target


def test_auto_and_none_load_the_target_as_it_is(saved_gemma_pair):
    for precision in ("auto", "none", None):  # a path names no preset: "auto" keeps it as loaded
        models = load_models(*saved_gemma_pair, device="cpu", precision=precision)
        assert models.precision == "none" and target_precision(models.target) is None
    assert load_models("tiny", device="cpu").precision == "none"  # the tiny preset recommends nothing


def test_precision_values_are_checked_before_loading(saved_gemma_pair):
    assert [checked_precision(p) for p in ("auto", "none", None, "float32", "int8")] == [
        "auto", "none", "none", "float32", "int8"]
    for bad in ("int4", "INT8", 8):
        with pytest.raises(DiffuSpecError, match="unknown precision.*'auto', 'none', 'float32', 'int8'"):
            load_models(*saved_gemma_pair, precision=bad)
    with pytest.raises(DiffuSpecError, match="unknown precision 'fp16'"):
        DiffuSpec.from_pretrained("tiny", precision="fp16")
    for device in ("cuda", "mps"):
        with pytest.raises(DiffuSpecError, match=f"precision='int8' prepares the target for CPU kernels.*{device}"):
            check_precision_device("int8", device)
        check_precision_device("auto", device)
        check_precision_device("none", device)
    check_precision_device("float32", "cpu")
    with pytest.raises(DiffuSpecError, match="dtype=torch.float32"):
        load_models(*saved_gemma_pair, device="cpu", dtype="bfloat16", precision="int8")


def test_auto_is_the_presets_recommendation_on_a_float32_cpu_target(tokenizer):
    assert PRESETS["gemma-3-270m"].precision == PRESETS["gemma-3-270m-base"].precision == "int8"
    assert PRESETS["tiny"].precision is None
    model = _tiny_gemma(tokenizer)
    assert resolved_precision("auto", model, "int8") == "int8"
    assert resolved_precision("auto", model, "float32") == "float32"
    assert resolved_precision("auto", model, None) is None  # no preset, or one recommending nothing
    assert resolved_precision("none", model, "int8") is None
    assert resolved_precision("float32", model, None) == "float32"
    assert resolved_precision("auto", _tiny_gemma(tokenizer).to(torch.bfloat16), "int8") is None
    assert resolved_precision("auto", _tiny_gemma(tokenizer).to("meta"), "int8") is None  # not on the CPU
