"""Saving and loading sparsified models: plain safetensors files and Hugging Face `save_pretrained`.

A sparsified model's state is tensors only, so `safetensors.torch.save_model` and `save_pretrained`
take it as it is. To load it, build the same architecture, sparsify it with the same arguments (the
structure is a pure function of them), then load the tensors: `load_state` does the last step for a
file or a folder, and `from_pretrained` does all three for a transformers model, reading the
arguments that `sparsify` stored in its config (`config.rbgp`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from rbgp.nn.sparsify import sparsify


def load_state(model: nn.Module, path: str | Path) -> None:
    """Load a safetensors file, or every `*.safetensors` file of a folder (as `save_pretrained` writes
    them, shards included), into `model`, which must already be sparsified like the saved one.

    Keys the files leave out are accepted only for tied parameters (saved once under another name);
    any other missing or unexpected key, or a layer whose sparsity structure differs, raises an error
    that names it. No pickle is read.
    """
    from safetensors.torch import load_file

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"no safetensors file at {path}")
    state: dict[str, Any] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[k]) for k in state if k in params}
    untied = [k for k in missing if k not in params or id(params[k]) not in loaded]
    if untied or unexpected:
        raise ValueError(
            f"state in {path} does not fit the model: missing {untied}, unexpected {list(unexpected)} "
            f"(was the model sparsified with the same arguments as the saved one?)"
        )
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        tie()


def from_pretrained(model_class: Any, path: str | Path, **config_overrides: Any) -> nn.Module:
    """A transformers model saved with `save_pretrained` after `rbgp.sparsify`: its config is read, the
    model is built from it (random init, nothing downloaded), sparsified with the stored arguments and
    loaded from the folder's safetensors files; returned in eval mode, like transformers does.

    model_class: a transformers model class (`GPT2LMHeadModel`) or Auto class (`AutoModelForCausalLM`).
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), **config_overrides)
    recipe = getattr(config, "rbgp", None)
    if not isinstance(recipe, dict):
        raise ValueError(
            f"{path}/config.json has no 'rbgp' entry: it was not saved from a model sparsified by "
            f"rbgp.sparsify (load it with {getattr(model_class, '__name__', model_class)}"
            f".from_pretrained instead)"
        )
    build = getattr(model_class, "from_config", None) or model_class
    model = build(config)
    recipe = dict(recipe)
    if recipe.get("init") in ("magnitude", "calibrated"):  # the fitted structures are in the files: nothing to fit
        recipe["init"] = "kaiming"
    sparsify(model, recipe.pop("sparsity"), recipe.pop("pattern"), **recipe.pop("pattern_kwargs"), **recipe)
    load_state(model, path)
    return model.eval()
