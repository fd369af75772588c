"""Loading a model pair by hub id or local path, or the embedded demo pair shipped in the package: quietly, with
one clear error for anything that goes wrong, and drafters paired with the target by their tokenizers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer,
                          PreTrainedModel, PreTrainedTokenizerBase)

from .adapters.remote_code import default_rope_shim
from .adapters.text_bridge import DrafterWithTokenizer, shares_vocabulary
from .config import DiffuSpecError
from .gguf import convert_gguf, gguf_path
from .path_search import CorpusNGram
from .precision import check_precision_device, checked_precision, prepare_target, resolved_precision
from .presets import preset, registry_gemma
from .tuning import merge_tuning, set_chat, template_text, tuning_chat

EMBEDDED_DIR = Path(__file__).parent / "demo"
EMBEDDED = {role: EMBEDDED_DIR / role for role in ("target", "drafter", "ar_drafter")}
CPS_NGRAM_FILE = "cps_ngram.safetensors"  # a drafter directory may carry CPS's corpus n-gram table


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


@dataclass
class LoadedModels:
    target: PreTrainedModel
    drafter: PreTrainedModel | DrafterWithTokenizer | None  # with its own tokenizer when it does not share ours
    ar_drafter: PreTrainedModel | DrafterWithTokenizer | None
    tokenizer: PreTrainedTokenizerBase
    cps_ngram: CorpusNGram | None = None
    precision: str = "none"  # what the target was prepared with ("none", "float32", "int8"; ``precision.py``)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def embedded_paths() -> dict[str, str]:
    """Paths of the embedded demo pair (target, diffusion drafter, AR drafter): the ``tiny`` preset."""
    missing = [str(p) for p in EMBEDDED.values() if not (p / "config.json").exists()]
    if missing:
        raise DiffuSpecError(
            f"the embedded demo models are missing ({', '.join(missing)}): reinstall diffuspec from a full "
            "clone, or rebuild them with `diffuspec train-demo`"
        )
    return {role: str(path) for role, path in EMBEDDED.items()}


def target_directory(target: str | None, dtype: torch.dtype | str | None = None) -> str:
    """Where the target's config and tokenizer files are, for metadata read without loading weights: a preset
    (None is the default) or a GGUF file resolved (a GGUF is converted once), anything else as given."""
    chosen = preset(target)
    if chosen is not None:
        return registry_gemma(_checked_dtype(dtype)) if chosen.target == "registry:gemma" else chosen.target
    file = gguf_path(target)
    return str(convert_gguf(file, _checked_dtype(dtype))) if file is not None else target


def checked_device(device: str | torch.device | None) -> str:
    """The device to load onto (default: CUDA when present), refused here if this machine has no such device."""
    name = str(device) if device is not None else default_device()
    try:
        kind = torch.device(name)
    except RuntimeError:
        raise DiffuSpecError(f"unknown device {name!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind.type, True):
        raise DiffuSpecError(f"device {name!r} is not available on this machine: use device='cpu'"
                             + (" or install a CUDA build of torch" if kind.type == "cuda" else ""))
    if kind.type == "cuda" and kind.index is not None and kind.index >= torch.cuda.device_count():
        raise DiffuSpecError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                             "device(s), numbered from 0")
    return name


def _checked_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise DiffuSpecError(f"unknown dtype {dtype!r}: use 'float32', 'bfloat16', 'float16' or 'auto'")
        return getattr(torch, dtype)
    return dtype


def _checked_path(path: str, role: str) -> str:
    """A local model directory with a config and weights, or else (not path-like) a hub id left to the hub."""
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise DiffuSpecError(f"the {role} directory {path} has no config.json: give the folder that "
                                 "save_pretrained wrote (config.json and weights)")
        if not any(next(local.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
            raise DiffuSpecError(f"the {role} directory {path} has a config.json but no weights (*.safetensors or "
                                 "*.bin): save the model there with save_pretrained, or point to where its weights are")
        return str(local)
    if local.exists():
        raise DiffuSpecError(f"the {role} path {path} is a file: give the model's directory (or a hub id)")
    if path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path:
        raise DiffuSpecError(f"the {role} directory {path} does not exist: check the path (or give a hub id)")
    return path


@contextmanager
def _loading(path: str, role: str, verbose: bool | None, bars: bool = True) -> Iterator[None]:
    """Quiet (no "Loading weights" progress bars unless ``verbose`` or DIFFUSPEC_VERBOSE=1; ``bars=False``: the
    switch is left alone, for loads that show none and run beside one that may), with any failure of
    transformers, the hub or safetensors turned into one DiffuSpecError naming the path and the fix."""
    from transformers.utils import logging as hf_logging

    if verbose is None:
        verbose = os.environ.get("DIFFUSPEC_VERBOSE", "") not in ("", "0")
    bars = hf_logging.is_progress_bar_enabled() if bars else None
    if not verbose and bars is not None:
        hf_logging.disable_progress_bar()
    try:
        yield
    except DiffuSpecError:
        raise
    except Exception as error:  # hub, config, safetensors and remote-code failures all end up here
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "trust_remote_code" in str(error):
            fix = "its code lives in the repository: pass trust_remote_code=True if you trust it"
        elif "safetensors" in type(error).__module__ or "header" in reason.lower():
            fix = "a weights file is damaged or truncated: download or save the model again"
        else:
            fix = "check that it is a complete Hugging Face model directory or a reachable hub id"
        raise DiffuSpecError(f"could not load the {role} from {path}: {reason} ({fix})") from error
    finally:
        if bars and not verbose:
            hf_logging.enable_progress_bar()


def _model_class(config) -> type:
    """The auto class that builds the whole model: a causal LM, DiffusionGemma's image-text-to-text head, or
    (Dream's remote code registers nothing else) plain AutoModel."""
    remote = getattr(config, "auto_map", None) or {}
    for auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
        if type(config) in auto._model_mapping or auto.__name__ in remote:
            return auto
    return AutoModel


def _load_model(path: str, role: str, *, device: str, dtype, device_map, trust_remote_code: bool,
                verbose: bool | None) -> PreTrainedModel:
    kwargs = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    with _loading(path, role, verbose):
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        with default_rope_shim(remote_code=trust_remote_code and bool(getattr(config, "auto_map", None))):
            model = _model_class(config).from_pretrained(path, config=config, **kwargs)
    if device_map is None:
        model = model.to(device)
    return model.eval()


def _own_tokenizer(path: str, role: str, verbose: bool | None, trust_remote_code: bool = False,
                   bars: bool = True) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved with a model, or None where there is none: a local directory without tokenizer files
    (AutoTokenizer would otherwise build a near-empty default one from the config)."""
    local = Path(path).expanduser()
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        return None
    with _loading(path, f"{role}'s tokenizer", verbose, bars):
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def _pair(model: PreTrainedModel, own: PreTrainedTokenizerBase | None,
          target: PreTrainedTokenizerBase) -> PreTrainedModel | DrafterWithTokenizer:
    """A drafter sharing the target's vocabulary works on its ids (its tokenizer's mask token recorded on its
    config, where the engine looks); any other speaks through text. Without tokenizer files, nothing to compare."""
    if own is None:
        return model
    if not shares_vocabulary(own, target):
        return DrafterWithTokenizer(model, own)
    if getattr(model.config, "mask_token_id", None) is None and own.mask_token_id is not None:
        model.config.mask_token_id = own.mask_token_id
    return model


def load_models(
    target: str | None = None,
    drafter: str | None = None,
    *,
    ar_drafter: str | None = None,
    tuning: str | None = None,
    gguf_file: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    precision: str | None = "auto",
    trust_remote_code: bool = False,
    verbose: bool | None = None,
) -> LoadedModels:
    """Load target, drafter(s), the target's tokenizer and the drafter directory's CPS n-gram table if it has
    one. ``target`` is a preset name (``diffuspec.presets``; None: the default), a model directory, a hub id or
    a GGUF file (``path.gguf``, or a folder with ``gguf_file=name``: converted once and cached); ``tuning`` a
    folder written by ``diffuspec tune-target``, applied to the target. A drafter whose tokenizer does not share
    the target's vocabulary comes back as a ``DrafterWithTokenizer`` (its drafts are translated through text).
    ``precision`` swaps the target's kernels after loading and tuning (``precision.prepare_target``): "auto" is
    the preset's recommendation on a CPU (int8 for Gemma 3 270M) and the model as loaded anywhere else, "none"
    (or None) the model as loaded, "float32" or "int8" those kernels (CPU only). Every failure is a
    ``DiffuSpecError``."""
    if target is None and (drafter is not None or ar_drafter is not None or tuning is not None):
        raise DiffuSpecError("a drafter or tuning was given without a target: pass target=... too")
    dtype = _checked_dtype(dtype)
    precision = checked_precision(precision)
    device = checked_device(device) if device_map is None else None
    check_precision_device(precision, None if device is None else torch.device(device).type)
    chosen = preset(target)
    chat_template, end_of_turn = None, ()
    if chosen is not None:
        if drafter is not None or ar_drafter is not None or tuning is not None or gguf_file is not None:
            raise DiffuSpecError(f"the {chosen.name!r} preset brings its own drafter and tuning: pass none with it "
                                 "(or give the target as a path to combine it with other parts)")
        target = target_directory(chosen.name, dtype)
        drafter, ar_drafter, tuning = (None if p is None else str(p) for p in (chosen.drafter, chosen.ar_drafter,
                                                                               chosen.tuning))
        chat_template, end_of_turn = chosen.chat_template, chosen.end_of_turn
    else:
        target = _converted(target, gguf_file, dtype)
    drafter, ar_drafter = (None if path is None else _converted(path, None, dtype) for path in (drafter, ar_drafter))
    paths = {role: _checked_path(path, role) for role, path in
             (("target", target), ("drafter", drafter), ("AR drafter", ar_drafter)) if path is not None}
    load = dict(device=device, dtype=dtype,
                device_map=device_map, trust_remote_code=trust_remote_code, verbose=verbose)
    # the tokenizer (seconds of JSON for a 262k vocabulary) loads beside the model, its tuning and its kernels
    with ThreadPoolExecutor(1, thread_name_prefix="diffuspec-tokenizer") as pool:
        loading_tokenizer = pool.submit(_own_tokenizer, paths["target"], "target", verbose, trust_remote_code,
                                        bars=False)
        target_model = _load_model(paths["target"], "target", **load)
        if tuning is not None:
            with _loading(tuning, "tuning", verbose):
                target_model = merge_tuning(target_model, tuning)
                chat_template, end_of_turn = tuning_chat(tuning)
        elif chat_template is not None:
            chat_template = template_text(chat_template)
        applied = resolved_precision(precision, target_model, chosen.precision if chosen is not None else None)
        prepare_target(target_model, applied)  # after the tuning is merged: its linears are the ones swapped
        tokenizer = loading_tokenizer.result()
    if tokenizer is None:
        raise DiffuSpecError(f"the target directory {target} has no tokenizer files: save the target's tokenizer "
                             "beside it (tokenizer.save_pretrained)")
    if tuning is not None or chat_template is not None:
        set_chat(target_model, tokenizer, chat_template, end_of_turn)
    drafters = {role: _pair(_load_model(path, role, **load), _own_tokenizer(path, role, verbose, trust_remote_code),
                            tokenizer)
                for role, path in paths.items() if role != "target"}
    drafter_model = drafters.get("drafter")
    return LoadedModels(
        target=target_model,
        drafter=drafter_model,
        ar_drafter=drafters.get("AR drafter"),
        tokenizer=tokenizer,
        cps_ngram=_cps_ngram(drafter) if isinstance(drafter_model, PreTrainedModel) else None,
        precision=applied or "none",
    )


def _converted(path: str, gguf_file: str | None, dtype) -> str:
    """``path`` itself, or for a GGUF file the folder of its cached conversion."""
    file = gguf_path(path, gguf_file)
    return path if file is None else str(convert_gguf(file, dtype if isinstance(dtype, torch.dtype) else None))


def _cps_ngram(drafter: str | None) -> CorpusNGram | None:
    table = Path(drafter) / CPS_NGRAM_FILE if drafter else None
    return CorpusNGram.load(table) if table and table.is_file() else None
