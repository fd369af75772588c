"""GGUF files as models: converted once through transformers (dequantised to the requested dtype), then loaded
from a cache like any saved model.

transformers reads a GGUF file in ``from_pretrained(folder, gguf_file=name)``; for Gemma 3 270M that takes about
85 s (29 s of it building the 262k-token tokenizer), while the saved conversion reloads in seconds. The cache entry
is keyed by the file's sha256, the dtype and the transformers version (a newer transformers may convert
differently), written to a temporary folder and renamed into place, so an interrupted conversion leaves nothing
half-written. The file's sha256 is remembered per (path, size, modification time), so a later load does not
read the whole file again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import torch

from .errors import DiffuSpecError

_INDEX_LOCK = threading.Lock()


def cache_root() -> Path:
    """Where diffuspec keeps converted models and measurements: $DIFFUSPEC_CACHE, else ~/.cache/diffuspec."""
    return Path(os.environ.get("DIFFUSPEC_CACHE") or Path.home() / ".cache" / "diffuspec")


def gguf_path(path: str, gguf_file: str | None = None) -> Path | None:
    """The GGUF file that ``path`` (a .gguf file, or a folder with ``gguf_file`` in it) names; None when it names
    something else (a model directory, a hub id)."""
    if gguf_file is not None:
        file = Path(path).expanduser() / gguf_file
        if not file.is_file():
            raise DiffuSpecError(f"gguf_file={gguf_file!r}: no such file in {path}: give the name of a .gguf file "
                                 "in that folder")
        return file
    if path.endswith(".gguf"):
        file = Path(path).expanduser()
        if not file.is_file():
            raise DiffuSpecError(f"the GGUF file {path} does not exist: check the path")
        return file
    return None


def file_sha256(file: Path) -> str:
    """The file's sha256, read once per (path, size, modification time)."""
    stat = file.stat()
    key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    index_file = cache_root() / "gguf" / "sha256.json"
    with _INDEX_LOCK:
        index = json.loads(index_file.read_text()) if index_file.is_file() else {}
        if key not in index:
            digest = hashlib.sha256()
            with file.open("rb") as stream:
                while block := stream.read(1 << 22):
                    digest.update(block)
            index[key] = digest.hexdigest()
            index_file.parent.mkdir(parents=True, exist_ok=True)
            part = index_file.with_suffix(f".{os.getpid()}.part")
            part.write_text(json.dumps(index, indent=1))
            part.replace(index_file)
        return index[key]


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype or torch.float32).removeprefix("torch.")


def converted_dir(sha256: str, dtype: torch.dtype | None) -> Path:
    """The cache folder of a conversion (it may not exist yet)."""
    import transformers

    return cache_root() / "gguf" / f"{sha256[:16]}-{_dtype_name(dtype)}-transformers{transformers.__version__}"


def convert_gguf(file: Path, dtype: torch.dtype | None = None, sha256: str | None = None) -> Path:
    """A folder holding ``file`` converted to a transformers model and tokenizer in ``dtype`` (default float32):
    the cached conversion, made now (one line on stderr) if there is none."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    target = converted_dir(sha256 or file_sha256(file), dtype)
    if (target / "config.json").is_file():
        return target
    print(f"diffuspec: converting {file.name} to {_dtype_name(dtype)} once (about a minute or two); "
          f"later loads read {target}", file=sys.stderr, flush=True)
    folder, name = str(file.parent), file.name
    partial = target.with_name(f"{target.name}.part-{os.getpid()}")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the line above is the progress report
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # transformers' own GGUF bars ignore its progress switch
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype or torch.float32)
        # The weights are plain tensors now; without this, save_pretrained refuses a "gguf-quantized" model and
        # the saved config would ask for a quantizer at the next load.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    except ImportError as error:
        raise DiffuSpecError(f"reading {name} needs the gguf package: pip install gguf ({error})") from error
    except Exception as error:  # a damaged file, an architecture transformers cannot read from GGUF, a full disk
        shutil.rmtree(partial, ignore_errors=True)
        raise DiffuSpecError(f"could not convert the GGUF file {file}: {error}") from error
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    try:
        partial.rename(target)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(partial, ignore_errors=True)
    return target
