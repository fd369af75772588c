"""The ``diffuspec`` command: generate, train-demo, tune-target, train-drafter, train-dflash, align, bench.

Every user error (a bad option value, a missing or broken model or prompts file, a device this machine lacks)
prints one line on stderr and exits with status 2, as argparse does for its own errors. torch and transformers
are imported inside the commands, so ``diffuspec --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .bench_prompts import PROMPT_SETS
from .config import LENGTH_POLICIES, MODES, DiffuSpecConfig, DiffuSpecError
from .load_arguments import add_load_options, load_options
from .presets import DEFAULT_PRESET


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _require_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise DiffuSpecError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def _check_device(device: str | None) -> None:
    """Fail now, in one line, on a device this machine lacks (torch would fail mid-load with a traceback)."""
    if device is None:
        return
    import torch

    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:  # CPU-only torch asserts on "cuda"
        raise DiffuSpecError(
            f"--device {device} is not usable on this machine ({_one_line(error)}): pick another, e.g. --device cpu"
        ) from error


def _check_model_path(option: str, path: str | None) -> None:
    """A local directory must hold a saved model; a name that cannot be a hub id must exist."""
    from .presets import PRESETS

    if path is None or path in PRESETS:
        return
    local = Path(path).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        return
    if local.exists():
        if not (local / "config.json").is_file():
            raise DiffuSpecError(
                f"{option} {path}: no config.json there: pass a directory written by save_pretrained, or a hub id"
            )
    elif path.startswith(("/", ".", "~")) or path.count("/") > 1:
        raise DiffuSpecError(f"{option} {path}: no such directory: pass a model directory or a hub id")


def _load_engine(args: argparse.Namespace, config: DiffuSpecConfig | None = None):
    """The engine of ``--target / --drafter / --ar-drafter / --device``; loading failures in one line."""
    from safetensors import SafetensorError

    from .engine import DiffuSpec

    for option in ("target", "drafter", "ar_drafter"):
        _check_model_path(f"--{option.replace('_', '-')}", getattr(args, option))
    _check_device(args.device)
    try:
        return DiffuSpec.from_pretrained(
            args.target, args.drafter, ar_drafter=args.ar_drafter, config=config, **load_options(args)
        )
    except DiffuSpecError:
        raise
    except (OSError, ValueError, SafetensorError) as error:  # unreadable files, unknown models, hub offline
        raise DiffuSpecError(f"cannot load the models: {_one_line(error)}") from error


def _load_dflash(path: str, device):
    """A DFlash drafter directory (``diffuspec train-dflash``), loaded as transformers loads it."""
    from transformers import AutoModel

    from .adapters.dflash import is_dflash

    _check_model_path("--dflash", path)
    try:
        model = AutoModel.from_pretrained(path).to(device).eval()
    except (OSError, ValueError) as error:
        raise DiffuSpecError(f"cannot load the DFlash drafter: {_one_line(error)}") from error
    if not is_dflash(model):
        raise DiffuSpecError(f"--dflash {path} holds a {model.config.model_type} model, not a DFlash drafter: "
                             "train one with `diffuspec train-dflash`")
    return model


def _read_prompts(source: str | Path) -> list[str]:
    from .training import read_prompts

    if not Path(source).is_file():
        raise DiffuSpecError(f"prompts file {source} not found: pass an existing text or JSON lines file")
    try:
        prompts = read_prompts(source)
    except (OSError, ValueError, KeyError) as error:  # unreadable, bad JSON, a row without a prompt
        raise DiffuSpecError(f"cannot read prompts from {source}: {_one_line(error)}") from error
    if not prompts:
        raise DiffuSpecError(f"prompts file {source} holds no prompt")
    return prompts


def _generate(args: argparse.Namespace) -> None:
    from .params import GenerationParams

    # Everything checkable is checked before the (slow) load.
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, stop=args.stop, seed=args.seed)
    policy = {"length_policy": args.length_policy} if args.length_policy else {}
    config = DiffuSpecConfig(mode=args.mode, cps=not args.no_cps, draft_length=args.draft_length, **policy)
    engine = _load_engine(args, config)
    prompt = args.prompt
    if args.command == "chat":
        from .chat import format_chat

        system = [{"role": "system", "content": args.system}] if args.system else []
        prompt = format_chat(engine.tokenizer, [*system, {"role": "user", "content": args.prompt}])
    if args.json:
        out = engine.generate(prompt, params=params)
        print(json.dumps({"text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason,
                          "stats": out.stats.summary()}, indent=2))
        return
    event = None
    for event in engine.stream(prompt, params=params):
        print(event.text, end="", flush=True)
    s = event.stats
    print(
        f"\n\n[{args.mode}] {s.new_tokens} tokens in {s.steps} steps, {s.tokens_per_second:.1f} tokens/s, "
        f"MAT {s.mean_accepted_tokens:.2f}, acceptance {s.acceptance_rate:.0%}, finish: {event.finish_reason}",
        file=sys.stderr,
    )


def _train_demo(args: argparse.Namespace) -> None:
    from .loading import EMBEDDED_DIR, default_device
    from .training import PRESETS, train_demo

    _check_device(args.device)
    out = Path(args.out) if args.out else EMBEDDED_DIR
    metrics = train_demo(out, PRESETS[args.preset], args.device or default_device(), reuse_target=args.reuse_target)
    print(json.dumps({k: metrics[k] for k in ("validation_loss", "greedy_acceptance_before_alignment",
                                              "greedy_acceptance_after_alignment")}, indent=2))
    print(f"saved to {out}")


def _tune_target(args: argparse.Namespace) -> None:
    from dataclasses import fields

    from .loading import load_models
    from .training.tune import TuningRecipe, tune_target

    _check_model_path("--target", args.target)
    _check_device(args.device)
    names = {f.name for f in fields(TuningRecipe)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    _require_positive(**{k: v for k, v in given.items() if isinstance(v, int)})
    recipe = TuningRecipe(**given)
    models = load_models(args.target, device=args.device, dtype="float32", precision="none")  # trained
    metrics = tune_target(models.target, models.tokenizer, args.out, recipe, log=lambda line: print(line, flush=True))
    held = metrics["heldout"]
    print(json.dumps({k: held[k] for k in ("rag_grounded_share", "rag_degenerate_share", "tool_calls_right_share",
                                           "tool_result_used_share")} | {"train_seconds": metrics["train_seconds"]}))
    print(f"saved to {args.out}: load it with DiffuSpec.from_pretrained(target, tuning={args.out!r})")


# TextRecipe fields the commands expose
TEXT_OPTIONS = ("raw_prompts", "chat_prompts", "request_prompts", "continuation", "seed")


def _text_recipe(args: argparse.Namespace):
    from .training.target_text import TextRecipe

    given = {k: getattr(args, k) for k in TEXT_OPTIONS if getattr(args, k) is not None}
    _require_positive(**{k: v for k, v in given.items() if k != "seed"})
    return TextRecipe(**given)


def _train_dflash(args: argparse.Namespace) -> None:
    from .loading import default_device
    from .training.dflash import DFlashRecipe, train_dflash

    _check_device(args.device)
    _require_positive(steps=args.steps, layers=args.layers, block_size=args.block_size)
    given = {k: getattr(args, k) for k in ("steps", "layers", "block_size") if getattr(args, k) is not None}
    recipe = DFlashRecipe(**given, text=_text_recipe(args))  # the recipe's defaults for what is not given
    metrics = train_dflash(args.target, args.out, recipe, args.device or default_device(), work=args.work,
                           tuning=args.tuning)
    print(json.dumps({k: metrics[k] for k in ("own_parameters", "target_layer_ids", "final_loss", "wall_seconds")}))
    print(f"saved to {args.out}")


def _train_drafter(args: argparse.Namespace) -> None:
    from .loading import load_models
    from .training.drafter import DrafterRecipe, train_drafter

    _check_device(args.device)
    _require_positive(steps=args.steps, layers=args.layers, block_size=args.block_size, draft_vocab=args.draft_vocab)
    given = {k: getattr(args, k) for k in ("steps", "layers", "block_size", "draft_vocab", "loss", "lr")
             if getattr(args, k) is not None}
    if args.keep_layers:
        given["keep_layers"] = tuple(args.keep_layers)
    recipe = DrafterRecipe(**given, text=_text_recipe(args))
    models = load_models(args.target, tuning=args.tuning, device=args.device, dtype="float32",
                         precision="none")  # drafters are trained on the float target
    metrics = train_drafter(models.target, models.tokenizer, args.out, recipe, target_name=args.target,
                            work=args.work, log=lambda line: print(line, flush=True))
    print(json.dumps({"own_parameters": metrics["own_parameters"], "stored_bytes": metrics["stored_bytes"],
                      "heldout_mean_accepted": metrics["heldout"]["mean_accepted"], "seconds": metrics["seconds"]}))
    print(f"saved to {args.out}: load it with DiffuSpec.from_pretrained({args.target!r}, {args.out!r})")


def _align(args: argparse.Namespace) -> None:
    from safetensors import SafetensorError

    from .training import align

    _require_positive(steps=args.steps, block=args.block, continuation=args.continuation,
                      batch_size=args.batch_size, prompt_tokens=args.prompt_tokens)
    _check_model_path("--target", args.target)
    _check_model_path("--drafter", args.drafter)
    _read_prompts(args.prompts)
    _check_device(args.device)
    try:
        result = align(args.target, args.drafter, args.prompts, args.out, steps=args.steps, block=args.block,
                       continuation=args.continuation, lr=args.lr, batch_size=args.batch_size,
                       prompt_tokens=args.prompt_tokens, device=args.device, mask_token_id=args.mask_token_id,
                       logits_shift=args.logits_shift, ngram_order=args.ngram_order)
    except (OSError, SafetensorError) as error:  # unreadable model files, hub offline, a full disk
        raise DiffuSpecError(f"align failed: {_one_line(error)}") from error
    print(json.dumps(result, indent=2))


def _replica_engine(name: str):
    """A tiny random pair built in-process for a drafter family no hub can serve here (plumbing, not speed):
    DiffusionGemma drafting for Gemma 4, with the embedded tokenizer."""
    from transformers import AutoTokenizer

    from .adapters import tiny_diffusion_gemma_pair
    from .engine import DiffuSpec
    from .loading import embedded_paths

    tokenizer = AutoTokenizer.from_pretrained(embedded_paths()["target"])
    target, drafter = tiny_diffusion_gemma_pair(len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id)
    return DiffuSpec(target, drafter, tokenizer)


def _bench_prompts(args: argparse.Namespace) -> list:
    """The prompts of ``--spec-bench``, ``--prompt-set`` and ``--prompts`` (the held-out set when none is
    given), cut to ``--per-category`` and ``--limit``; files are checked before any model loads."""
    from .bench_prompts import per_category, prompt_set, spec_bench, text_set

    sets = args.prompt_set or ([] if args.prompts or args.spec_bench else ["heldout"])
    prompts = spec_bench(args.spec_bench) if args.spec_bench else []
    for name in dict.fromkeys(sets):
        prompts += prompt_set(name)
    if args.prompts:
        prompts += text_set(_read_prompts(args.prompts), "prompts")
    if args.per_category:
        prompts = per_category(prompts, args.per_category)
    return prompts[: args.limit]


def _bench(args: argparse.Namespace) -> None:
    import torch

    from .bench import (GENERATE_AS_LOADED, PLOTS_HINT, core_methods, dflash_methods, dlm_methods, llamacpp_methods,
                        markdown_table, reference_of, run_benchmark, sweep_methods, target_gguf, transformers_runner,
                        write_results)
    from .loading import EMBEDDED_DIR
    from .presets import preset

    _require_positive(limit=args.limit, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
                      per_category=args.per_category)
    prompts = _bench_prompts(args)
    # every row names its mode; "ar" as the configured one lets a target without a drafter load too
    engine = _replica_engine(args.replica) if args.replica else _load_engine(args, DiffuSpecConfig(mode="ar"))
    core = {**core_methods(engine), **dlm_methods(engine)}
    methods = {**core, **sweep_methods(engine)}
    embedded_dflash = EMBEDDED_DIR / "dflash"  # trained for the tiny preset's target only
    tiny = not args.replica and getattr(preset(args.target), "name", None) == "tiny"
    dflash_dir = args.dflash or (embedded_dflash if tiny and (embedded_dflash / "config.json").exists() else None)
    if dflash_dir is not None:
        core |= dflash_methods(engine, _load_dflash(str(dflash_dir), engine.device))
    prepared = engine.precision != "none"
    if prepared and (not args.methods or GENERATE_AS_LOADED in args.methods):  # generate without our kernels
        from .loading import load_models

        plain = load_models(args.target, **{**load_options(args), "precision": "none"}).target
        core[GENERATE_AS_LOADED] = transformers_runner(engine, plain)
    if args.llamacpp:
        gguf = target_gguf(args.target) if args.llamacpp == "target" else args.llamacpp
        longest = max(len(p.token_ids(engine.tokenizer)) for p in prompts)
        context = longest + args.max_new_tokens + 64  # room for prompt lookup's drafts past the last token
        core |= llamacpp_methods(gguf, threads=torch.get_num_threads(), context=context,
                                 eos_token_ids=sorted(engine.eos_token_ids), vocab_size=engine.vocab_size)
    methods |= core
    chosen = args.methods or [*core, *(sweep_methods(engine) if args.sweep else {})]
    unknown = set(chosen) - set(methods)
    if unknown:
        raise DiffuSpecError(f"unknown methods {sorted(unknown)}: choose from {', '.join(methods)}")
    references = [reference_of(name) for name in chosen if reference_of(name)]  # what the chosen are checked against
    methods = {name: methods[name] for name in dict.fromkeys([*references, *chosen])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_benchmark(engine, prompts, max_new_tokens=args.max_new_tokens, repeats=args.repeats, methods=methods,
                            log=out / "runs.jsonl")
    results["settings"]["arguments"] = {k: v for k, v in vars(args).items() if k not in ("run", "command")}
    written = write_results(results, out)
    print(markdown_table(results))
    print(f"written to {out}/: {', '.join(p.name for p in written)} (and runs.jsonl, one line per run)")
    if not any(p.name == "bench.png" for p in written):
        print(f"no bench.png: matplotlib is not installed ({PLOTS_HINT} draws it)")
    failures = results["lossless_failures"]
    if failures:
        print(f"diffuspec: error: {len(failures)} outputs differ from their reference ("
              f"{', '.join(sorted({f['method'] for f in failures}))}): see {out}/results.md", file=sys.stderr)
        raise SystemExit(1)


def _serve(args: argparse.Namespace) -> None:
    from .server.launch import serve

    _check_model_path("--target", args.target)
    _check_device(args.device)
    serve(args)


def _bench_serve(args: argparse.Namespace) -> None:
    from .loading import EMBEDDED_DIR
    from .server.load import bench_serve, markdown

    prompts = _read_prompts(args.prompts or EMBEDDED_DIR / "short_prompts.jsonl")
    results = bench_serve(args, prompts)
    print(markdown(results))
    print(f"results in {args.out}/serve.json and serve.md")


def _add_generation_options(command: argparse.ArgumentParser) -> None:
    """The options of ``generate`` and ``chat``."""
    command.add_argument("--target", help="preset, model directory, GGUF file or hub id of the AR target "
                         f"(default: {DEFAULT_PRESET})")
    command.add_argument("--drafter", help="hub id or local path of the diffusion drafter")
    command.add_argument("--ar-drafter", help="hub id or local path of an AR draft model (mode ar-drafter)")
    command.add_argument("--max-new-tokens", type=int, default=128)
    command.add_argument("--temperature", type=float, default=0.0, help="0 (the default) decodes greedily")
    command.add_argument("--top-k", type=int, help="sample from the k likeliest tokens only")
    command.add_argument("--top-p", type=float, help="sample from the smallest set of tokens holding this much mass")
    command.add_argument("--seed", type=int, help="fixes the sampled output (the same for every mode)")
    command.add_argument("--stop", action="append", help="stop string (repeatable)")
    command.add_argument("--mode", choices=MODES, default="diffuspec")
    command.add_argument("--no-cps", action="store_true", help="per-position argmax instead of path search")
    command.add_argument("--draft-length", type=int, help="fixed draft length k (default: the length policy's)")
    command.add_argument("--length-policy", choices=LENGTH_POLICIES,
                         help="cost: the k with the most expected tokens per second here (default); adl: the paper's")
    add_load_options(command)
    command.add_argument("--json", action="store_true", help="print the Generation with its stats as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffuspec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="continue a text (the default model unless --target is given)")
    gen.add_argument("prompt")
    _add_generation_options(gen)
    gen.set_defaults(run=_generate)

    chat = sub.add_parser("chat", help="answer a message through the model's chat template")
    chat.add_argument("prompt", help="the user's message")
    chat.add_argument("--system", help="a system prompt")
    _add_generation_options(chat)
    chat.set_defaults(run=_generate)

    demo = sub.add_parser("train-demo", help="rebuild the embedded demo pair from scratch")
    demo.add_argument("--out", help="output folder (default: the package's embedded demo folder)")
    demo.add_argument("--preset", choices=["demo", "tiny"], default="demo")
    demo.add_argument("--device")
    demo.add_argument("--reuse-target", action="store_true",
                      help="keep a target already in --out if it was trained with the same recipe")
    demo.set_defaults(run=_train_demo)

    tune = sub.add_parser("tune-target", help="tune a pretrained causal LM to chat, answer from a context and call "
                          "tools (a LoRA adapter on the synthesised conversations; written as a tuning folder)")
    tune.add_argument("--target", default="gemma-3-270m-base",
                      help="preset, model directory or GGUF file to tune (default: gemma-3-270m-base)")
    tune.add_argument("--out", required=True, help="the tuning folder to write (resumes from its checkpoint)")
    tune.add_argument("--steps", type=int)
    tune.add_argument("--batch-size", type=int)
    tune.add_argument("--lr", type=float)
    tune.add_argument("--rank", type=int, help="LoRA rank")
    tune.add_argument("--conversations", type=int, help="synthesised training conversations")
    tune.add_argument("--eval-conversations", type=int, help="held-out conversations scored at the end")
    tune.add_argument("--seed", type=int)
    tune.add_argument("--device")
    tune.set_defaults(run=_tune_target)

    def text_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--target", required=True, help="preset, model directory or GGUF file of the AR target")
        command.add_argument("--tuning", help="a tuning folder (tune-target) applied to the target, as the engine does")
        command.add_argument("--out", required=True)
        command.add_argument("--raw-prompts", type=int, help="code and prose prompts the target continues")
        command.add_argument("--chat-prompts", type=int,
                             help="chat prompts the target answers (when its tokenizer has a chat template)")
        command.add_argument("--request-prompts", type=int, help="open requests (write, explain, compare...) "
                             "the target answers (when its tokenizer has a chat template)")
        command.add_argument("--continuation", type=int, help="tokens the target writes per prompt")
        command.add_argument("--seed", type=int)
        command.add_argument("--steps", type=int)
        command.add_argument("--layers", type=int, help="drafter layers")
        command.add_argument("--block-size", type=int, help="block positions per pass (the anchor included)")
        command.add_argument("--device")
        command.add_argument("--work", help="where the target's continuations and the checkpoint are kept (default "
                             "<out>/work; give train-drafter's to train-dflash to learn from the very same rows)")

    dr = sub.add_parser("train-drafter", help="train a block drafter for a causal target: its own last layers "
                        "reading its hidden states, a draft vocabulary, streak-aligned on its own continuations")
    text_options(dr)
    dr.add_argument("--draft-vocab", type=int, help="tokens the drafter may propose (the target's most used)")
    dr.add_argument("--loss", choices=["streak", "ce"], help="streak: SpecDiff-2 alignment (default); ce: DFlash's")
    dr.add_argument("--lr", type=float)
    dr.add_argument("--keep-layers", type=int, nargs="+",
                    help="also keep these target hidden_states in the cached rows (a DFlash peer trained with "
                    "--work <out>/work reads them)")
    dr.set_defaults(run=_train_drafter)

    df = sub.add_parser("train-dflash", help="train a DFlash drafter (transformers' speculation_type=\"dflash\") "
                        "for a causal target on its own greedy continuations")
    text_options(df)
    df.set_defaults(run=_train_dflash)

    al = sub.add_parser("align", help="streak-distil a diffusion drafter towards an AR verifier")
    al.add_argument("--target", required=True)
    al.add_argument("--drafter", required=True)
    al.add_argument("--prompts", required=True, help="text file (a prompt per line) or JSON lines")
    al.add_argument("--out", required=True)
    al.add_argument("--steps", type=int, default=400)
    al.add_argument("--block", type=int, default=16, help="the longest draft block to align (about ADL's k)")
    al.add_argument("--continuation", type=int, default=64,
                    help="verifier tokens generated per prompt; blocks are drafted from random points in them")
    al.add_argument("--lr", type=float, default=1e-3)
    al.add_argument("--batch-size", type=int, default=16)
    al.add_argument("--prompt-tokens", type=int, default=64)
    al.add_argument("--mask-token-id", type=int)
    al.add_argument("--logits-shift", action=argparse.BooleanOptionalAction, default=None,
                    help="Dream-style shifted drafter logits (default: from the drafter's config)")
    al.add_argument("--ngram-order", type=int,
                    help="order of CPS's corpus n-gram table, counted on the continuations and saved as "
                    "cps_ngram.safetensors (default: the longest up to 5 the vocabulary allows)")
    al.add_argument("--device")
    al.set_defaults(run=_align)
    bench = sub.add_parser("bench", help="measure every method side by side (tokens/s, speedups, MAT, acceptance per "
                           "prompt category; every output checked against AR greedy decoding)")
    bench.add_argument("--target", help=f"preset, model directory or GGUF file (default: {DEFAULT_PRESET})")
    bench.add_argument("--drafter")
    bench.add_argument("--ar-drafter")
    bench.add_argument("--replica", choices=["diffusion-gemma"],
                       help="bench a tiny random replica pair built in-process instead of real models (plumbing)")
    bench.add_argument("--spec-bench", metavar="QUESTION_JSONL",
                       help="Spec-Bench's data/spec_bench/question.jsonl: the first turn of each question, by category")
    bench.add_argument("--prompt-set", nargs="+", choices=PROMPT_SETS,
                       help="shipped prompt sets: heldout (corpus windows), short (one-line code starts), code (the "
                       "same starts, as requests for chat targets), chat (chat, RAG and tool conversations); "
                       "default: heldout, unless --spec-bench or --prompts is given")
    bench.add_argument("--prompts", help="a prompt file of your own (text lines or JSON lines), continued as text")
    bench.add_argument("--per-category", type=int, metavar="N",
                       help="the first N prompts of every category (a balanced subset)")
    bench.add_argument("--limit", type=int, help="use only the first N prompts")
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--repeats", type=int, default=1, help="passes over the prompts (their stats are summed)")
    bench.add_argument("--methods", nargs="+", help="the methods to run (default: all but the sweep); each one's "
                       "reference (ar, or dlm for dlm and spiffy) runs too")
    bench.add_argument("--sweep", action="store_true",
                       help="add the sweep rows (more fixed draft lengths, tree sizes, no CPS at k_max)")
    bench.add_argument("--dflash", help="a DFlash drafter directory (train-dflash): adds hf-dflash, dflash and "
                       "diffuspec-dflash (default with the tiny preset: the package's demo/dflash/)")
    bench.add_argument("--llamacpp", metavar="GGUF", nargs="?", const="target",
                       help="add llama.cpp's greedy and prompt-lookup decoding on this GGUF file (no file: the "
                       "target's own, a .gguf target or a Gemma preset's), with torch's thread count (speed only; "
                       "needs the llamacpp extra)")
    add_load_options(bench)
    bench.add_argument("--out", default="bench-results")
    bench.set_defaults(run=_bench)

    from .server.options import add_bench_serve_arguments, add_serve_arguments

    srv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, "
                         "/metrics); --replicas N on Ray Serve (needs the serve extra, and ray for replicas)")
    add_serve_arguments(srv)
    srv.set_defaults(run=_serve)
    load = sub.add_parser("bench-serve", help="requests/s and p50/p99 latency of `diffuspec serve` for 1, 4 and "
                          "16 clients, one process and Ray Serve replicas")
    add_bench_serve_arguments(load)
    load.set_defaults(run=_bench_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except DiffuSpecError as error:
        print(f"diffuspec: error: {_one_line(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
