"""Interop with PEFT: export a SoftPrompt as a PEFT prompt-tuning adapter, import one back.

PEFT puts its virtual tokens before everything the user feeds. A promptlift
SoftPrompt placed `after_header` (the default) is exported with the chat
header's own embeddings as the first virtual tokens, so the PEFT model sees the
identical sequence when the user's text starts after the header; the export
writes that header into `promptlift_export.json` ("strip_prefix"). A prompt
with `position=prepend` exports as-is. Either way the adapter gives the same
predictions as promptlift (tested).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import ArtifactError, ConfigError
from .soft import SoftPrompt


def export_peft(prompt, lm, out: str | Path) -> Path:
    """Write a PEFT PROMPT_TUNING adapter for `prompt` (a SoftPrompt) into directory `out`."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    if not isinstance(prompt, SoftPrompt):
        raise ConfigError(f"PEFT export supports soft prompts (prompt-tuning, p-tuning), not {prompt.type!r} prompts")
    if 0 <= prompt.split < prompt.embeds.shape[0]:
        raise ConfigError("PEFT export needs all virtual tokens before the instruction (split=-1); "
                          "PEFT cannot place virtual tokens after text")
    prompt.check_model(lm)
    layout = prompt.layout(lm, None)
    embeds = prompt.embeds.detach().float().cpu()
    strip = ""
    if prompt.position == "after_header" and layout.header:
        with torch.no_grad():
            head = lm.embed(torch.tensor(layout.header, device=lm.device)).detach().float().cpu()
        embeds = torch.cat([head, embeds], dim=0)
        strip = lm.tokenizer.decode(layout.header)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=embeds.shape[0],
                             token_dim=lm.hidden_size, num_transformer_submodules=1,
                             base_model_name_or_path=str(lm.model_id))
    peft_model = get_peft_model(lm.model, cfg)
    try:
        with torch.no_grad():
            peft_model.prompt_encoder["default"].embedding.weight.copy_(embeds)
        peft_model.save_pretrained(str(out))
    finally:
        _unwrap(lm, peft_model)
    (out / "promptlift_export.json").write_text(json.dumps({
        "model": lm.model_id, "method": prompt.method, "position": prompt.position,
        "instruction": prompt.instruction, "strip_prefix": strip,
        "usage": "Render the prompt with the model's chat template as usual; when strip_prefix is set, "
                 "remove it from the start of the text before tokenizing (it is inside the virtual tokens).",
    }, indent=2) + "\n")
    return out


def _unwrap(lm, peft_model) -> None:
    """Leave the shared model as it was: frozen, in eval mode, no PEFT state attached."""
    base = peft_model.get_base_model()
    original = getattr(peft_model, "base_model_prepare_inputs_for_generation", None)
    if original is not None:
        base.prepare_inputs_for_generation = original
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if hasattr(base, attr):
            try:
                delattr(base, attr)
            except AttributeError:
                pass
    lm.model = base.eval()
    lm.model.requires_grad_(False)


def import_peft(adapter_dir: str | Path, lm, instruction: str = "") -> SoftPrompt:
    """A SoftPrompt (position=prepend) from a PEFT PROMPT_TUNING or P_TUNING adapter directory."""
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    cfg_path = d / "adapter_config.json"
    if not cfg_path.exists():
        raise ArtifactError(f"{d}: not a PEFT adapter (no adapter_config.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{cfg_path}: malformed JSON ({e.msg})") from None
    kind = cfg.get("peft_type")
    if kind not in ("PROMPT_TUNING", "P_TUNING"):
        raise ArtifactError(f"{cfg_path}: peft_type {kind!r} is not supported; expected PROMPT_TUNING or P_TUNING")
    wpath = d / "adapter_model.safetensors"
    if wpath.exists():
        weights = load_file(str(wpath))
    elif (d / "adapter_model.bin").exists():
        weights = torch.load(d / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ArtifactError(f"{d}: adapter weights missing (adapter_model.safetensors)")
    if "prompt_embeddings" not in weights:
        raise ArtifactError(f"{wpath}: no 'prompt_embeddings' tensor")
    emb = weights["prompt_embeddings"].float()
    if emb.shape[-1] != lm.hidden_size:
        raise ArtifactError(f"{wpath}: virtual tokens have size {emb.shape[-1]}, the model {lm.hidden_size}")
    meta_path = d / "promptlift_export.json"
    strip = json.loads(meta_path.read_text()).get("strip_prefix", "") if meta_path.exists() else ""
    if strip:  # a promptlift export: the first virtual tokens are the chat header
        n_head = len(lm.encode(strip))
        return SoftPrompt(instruction=instruction, position="after_header", hidden_size=lm.hidden_size,
                          num_layers=lm.num_layers, embeds=emb[n_head:].contiguous(), model=lm.model_id,
                          method="peft-import")
    return SoftPrompt(instruction=instruction, position="prepend", hidden_size=lm.hidden_size,
                      num_layers=lm.num_layers, embeds=emb, model=lm.model_id, method="peft-import")
