"""A minutes-long end-to-end run of the training pipeline on a tiny corpus."""

import torch

from diffuspec import DiffuSpec
from diffuspec.loading import CPS_NGRAM_FILE
from diffuspec.training import (
    PRESETS,
    align_drafter,
    build_ar_model,
    build_diffusion_model,
    causal_lm_loss,
    fit,
    greedy_continuations,
    random_windows,
    stdlib_corpus,
    streak_loss,
    token_stream,
    train_demo,
    train_tokenizer,
)


def test_train_demo_tiny_end_to_end(tmp_path):
    metrics = train_demo(tmp_path, PRESETS["tiny"], device="cpu")
    for role in ("target", "drafter", "ar_drafter"):
        assert (tmp_path / role / "model.safetensors").exists() and (tmp_path / role / "README.md").exists()
    assert (tmp_path / "training_curves.png").stat().st_size > 10_000
    assert (tmp_path / "drafter" / CPS_NGRAM_FILE).exists()
    engine = DiffuSpec.from_pretrained(str(tmp_path / "target"), str(tmp_path / "drafter"),
                                       ar_drafter=str(tmp_path / "ar_drafter"))
    out = engine.generate("import", max_new_tokens=16)
    assert out.token_ids == engine.generate("import", max_new_tokens=16, mode="ar").token_ids
    assert set(metrics["greedy_acceptance_after_alignment"]) == {
        "diffuspec", "diffuspec-online-ngram", "diffuspec-no-cps", "ar-drafter"
    }


def test_losses_fall_and_alignment_raises_acceptance():
    recipe = PRESETS["tiny"]
    train, _, _ = stdlib_corpus(recipe.corpus_bytes, recipe.heldout_every)
    tokenizer = train_tokenizer(train, recipe.vocab_size)
    stream = token_stream(tokenizer, train)
    gen = torch.Generator().manual_seed(0)
    target = build_ar_model(recipe.target, tokenizer, recipe.context)
    lm = fit(target, lambda s: causal_lm_loss(target, random_windows(stream, 8, 64, gen)), 60, 5e-3, "t")
    assert sum(lm[-10:]) < sum(lm[:10])
    prompts = random_windows(stream, 64, 24, gen)
    continuations = greedy_continuations(target, prompts, 8)
    drafter = build_diffusion_model(recipe.drafter, tokenizer, recipe.context)
    mask = tokenizer.mask_token_id
    with torch.no_grad():
        before = streak_loss(drafter, prompts, continuations, mask)[1]
    losses, _ = align_drafter(drafter, prompts, continuations, mask, steps=60, lr=5e-3, batch_size=16,
                              block=8, min_block=4, generator=gen)
    with torch.no_grad():
        after = streak_loss(drafter, prompts, continuations, mask)[1]
    assert sum(losses[-10:]) < sum(losses[:10])
    assert after > before + 0.5  # expected accepted streak on the verifier's own continuations


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
