"""Interop with PEFT: export soft and prefix prompts as PEFT adapters, import them back.

- `SoftPrompt` (prompt-tuning, p-tuning) <-> PEFT PROMPT_TUNING (import also reads P_TUNING).
- `PrefixPrompt` (prefix-tuning, p-tuning-v2) <-> PEFT PREFIX_TUNING
  (`prefix_projection=False`: the adapter's weights are the key/value prefix itself).

PEFT puts its virtual tokens before everything the user feeds. A promptlift
prompt placed `after_header` (the default) is exported with the chat header
included as the first virtual tokens (its embeddings for a SoftPrompt, its
key/value cache for a PrefixPrompt), so the PEFT model sees the identical
sequence when the user's text starts after the header; the export writes that
header into `promptlift_export.json` ("strip_prefix"). A prompt with
`position=prepend` exports as-is. Either way the adapter gives the same
predictions as promptlift (tested).

PEFT's prefix layout (peft 0.21 `PeftModel.get_prompt`): the weight is
(num_virtual_tokens, num_layers * 2 * token_dim), viewed as
(tokens, 2 * layers, heads, head_dim) with rows 2l = keys and 2l+1 = values of
layer l. For grouped-query attention PEFT sets heads = the model's key/value
heads and token_dim = kv_heads * head_dim (`_prepare_prompt_learning_config`),
which is exactly promptlift's (layers, kv_heads, k, head_dim) per tensor.

The adapter's `base_model_name_or_path` is a local directory that
`AutoPeftModelForCausalLM.from_pretrained(adapter_dir)` loads by itself: the
model's own directory, or for a bundled/GGUF model its converted fp32 folder in
the cache. The tokenizer is saved beside the adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .artifacts.soft import PrefixPrompt, SoftPrompt
from .engine.soft import check_tensor_prompt
from .errors import ArtifactError, ConfigError


def export_peft(prompt, lm, out: str | Path, *, base_model: str | Path | None = None) -> Path:
    """Write a PEFT adapter for `prompt` (SoftPrompt -> PROMPT_TUNING, PrefixPrompt -> PREFIX_TUNING) into `out`.

    base_model: the directory to record as the adapter's base model (default: the
    directory `lm` was loaded from, `lm.path`).
    """
    if isinstance(prompt, (PrefixPrompt, SoftPrompt)) and prompt.demos:
        raise ConfigError(f"this {prompt.type} prompt carries {len(prompt.demos)} demonstrations, which a PEFT "
                          "adapter cannot hold; serve it with `promptlift serve`, or export one made without them")
    if isinstance(prompt, PrefixPrompt):
        return _export_prefix(prompt, lm, Path(out), base_model)
    if isinstance(prompt, SoftPrompt):
        return _export_soft(prompt, lm, Path(out), base_model)
    raise ConfigError(f"PEFT export supports soft prompts (prompt-tuning, p-tuning) and prefix prompts "
                      f"(prefix-tuning, p-tuning-v2), not {getattr(prompt, 'type', type(prompt).__name__)!r} prompts")


def _header(prompt, lm) -> list[int]:
    """Token ids of the chat header a prompt placed `after_header` sits behind (empty for `prepend`)."""
    if prompt.position != "after_header":
        return []
    from .template import build_layout

    return list(build_layout(lm, prompt.instruction).header)


def _base_model_dir(lm, base_model) -> tuple[str, bool]:
    """(what to record as base_model_name_or_path, whether it is a loadable local directory)."""
    path = base_model if base_model is not None else getattr(lm, "path", None)
    if path is not None and (Path(path) / "config.json").is_file():
        return str(Path(path).resolve()), True
    return str(path if path is not None else lm.model_id), False


def _export_soft(prompt: SoftPrompt, lm, out: Path, base_model) -> Path:
    from peft import PromptTuningConfig, TaskType

    if 0 <= prompt.split < prompt.embeds.shape[0]:
        raise ConfigError("PEFT export needs all virtual tokens before the instruction (split=-1); "
                          "PEFT cannot place virtual tokens after text")
    check_tensor_prompt(prompt, lm)
    header = _header(prompt, lm)
    embeds = prompt.embeds.detach().float().cpu()
    if header:
        with torch.no_grad():
            head = lm.embed(torch.tensor(header, device=lm.device)).detach().float().cpu()
        embeds = torch.cat([head, embeds], dim=0)
    base, loadable = _base_model_dir(lm, base_model)
    cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=embeds.shape[0],
                             token_dim=lm.hidden_size, num_transformer_submodules=1, num_layers=lm.num_layers,
                             num_attention_heads=lm.model.config.num_attention_heads, base_model_name_or_path=base)
    _write_adapter(cfg, embeds, out)
    _write_meta(prompt, lm, out, header, base, loadable)
    return out


def prefix_to_peft_weight(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(layers, kv_heads, k, head_dim) keys and values -> PEFT's (k, layers * 2 * kv_heads * head_dim) weight."""
    L, H, k, D = keys.shape
    kv = torch.stack([keys, values], dim=1)  # (L, 2, H, k, D): row 2l keys, 2l+1 values of layer l
    return kv.reshape(2 * L, H, k, D).permute(2, 0, 1, 3).reshape(k, 2 * L * H * D).contiguous()


def peft_weight_to_prefix(weight: torch.Tensor, num_layers: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `prefix_to_peft_weight`: (k, layers*2*heads*head_dim) -> keys, values (layers, heads, k, head_dim)."""
    k = weight.shape[0]
    D = weight.shape[1] // (2 * num_layers * heads)
    kv = weight.reshape(k, 2 * num_layers, heads, D).permute(1, 2, 0, 3).reshape(num_layers, 2, heads, k, D)
    return kv[:, 0].contiguous(), kv[:, 1].contiguous()


def _export_prefix(prompt: PrefixPrompt, lm, out: Path, base_model) -> Path:
    from peft import PrefixTuningConfig, TaskType

    check_tensor_prompt(prompt, lm)
    keys, values = prompt.keys.detach().float().cpu(), prompt.values.detach().float().cpu()
    want = (lm.num_layers, lm.num_kv_heads, lm.head_dim)
    if keys.dim() != 4 or (keys.shape[0], keys.shape[1], keys.shape[3]) != want or values.shape != keys.shape:
        raise ArtifactError(f"prefix prompt keys/values have shapes {tuple(keys.shape)}/{tuple(values.shape)}; "
                            f"the model needs (layers={want[0]}, kv_heads={want[1]}, k, head_dim={want[2]})")
    header = _header(prompt, lm)
    if header:  # the header's own cache becomes the first virtual tokens (exact: same positions 0..h-1)
        with torch.no_grad():
            _, kv = lm.forward(ids=torch.tensor([header], device=lm.device))
        hk = torch.stack([x[0] for x in kv.keys]).float().cpu()  # (L, H, h, D)
        hv = torch.stack([x[0] for x in kv.values]).float().cpu()
        keys, values = torch.cat([hk, keys], dim=2), torch.cat([hv, values], dim=2)
    weight = prefix_to_peft_weight(keys, values)
    base, loadable = _base_model_dir(lm, base_model)
    cfg = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=keys.shape[2], prefix_projection=False,
                             num_layers=lm.num_layers, num_attention_heads=lm.num_kv_heads,
                             token_dim=lm.num_kv_heads * lm.head_dim, encoder_hidden_size=lm.num_kv_heads * lm.head_dim,
                             num_transformer_submodules=1, base_model_name_or_path=base)
    _write_adapter(cfg, weight, out)
    _write_meta(prompt, lm, out, header, base, loadable)
    return out


def _write_adapter(cfg, weight: torch.Tensor, out: Path) -> None:
    """adapter_config.json + adapter_model.safetensors as PEFT's own `save_pretrained` writes them for prompt learning."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    cfg.inference_mode = True
    cfg.save_pretrained(str(out))
    save_file({"prompt_embeddings": weight.contiguous()}, str(out / "adapter_model.safetensors"))


def _write_meta(prompt, lm, out: Path, header: list[int], base: str, loadable: bool) -> None:
    lm.tokenizer.save_pretrained(str(out))  # AutoPeftModel looks for it beside the adapter (else asks the Hub)
    strip = lm.tokenizer.decode(header) if header else ""
    (out / "promptlift_export.json").write_text(json.dumps({
        "model": lm.model_id, "model_identity": getattr(lm, "identity", None), "type": prompt.type,
        "method": prompt.method, "position": prompt.position, "instruction": prompt.instruction,
        "strip_prefix": strip, "header_virtual_tokens": len(header),
        "base_model": base, "base_model_loadable": loadable,
        "usage": "Render the prompt with the model's chat template as usual; when strip_prefix is set, "
                 "remove it from the start of the text before tokenizing (it is inside the virtual tokens).",
    }, indent=2) + "\n")


def import_peft(adapter_dir: str | Path, lm, instruction: str = ""):
    """A promptlift prompt from a PEFT adapter directory.

    PROMPT_TUNING / P_TUNING -> SoftPrompt; PREFIX_TUNING -> PrefixPrompt. A promptlift
    export comes back with its original position; a foreign adapter as `prepend`.
    """
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
    if kind not in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"):
        raise ArtifactError(f"{cfg_path}: peft_type {kind!r} is not supported; "
                            "expected PROMPT_TUNING, P_TUNING or PREFIX_TUNING")
    wpath = d / "adapter_model.safetensors"
    try:
        if wpath.exists():
            weights = load_file(str(wpath))
        elif (d / "adapter_model.bin").exists():
            wpath = d / "adapter_model.bin"
            weights = torch.load(wpath, map_location="cpu", weights_only=True)
        else:
            raise ArtifactError(f"{d}: adapter weights missing (adapter_model.safetensors)")
    except ArtifactError:
        raise
    except Exception as e:  # safetensors / unpickling errors of a corrupt or foreign file
        raise ArtifactError(f"{wpath}: unreadable adapter weights ({str(e).splitlines()[0] if str(e) else e!r})") from None
    if "prompt_embeddings" not in weights:
        raise ArtifactError(f"{wpath}: no 'prompt_embeddings' tensor")
    emb = weights["prompt_embeddings"].float()
    meta_path = d / "promptlift_export.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    strip = meta.get("strip_prefix", "")
    position = "after_header" if strip else "prepend"
    if kind == "PREFIX_TUNING":
        return _import_prefix(emb, cfg, meta, strip, lm, instruction, wpath)
    if emb.shape[-1] != lm.hidden_size:
        raise ArtifactError(f"{wpath}: virtual tokens have size {emb.shape[-1]}, the model {lm.hidden_size}")
    n_head = len(lm.encode(strip)) if strip else 0  # a promptlift export: the first virtual tokens are the header
    return SoftPrompt(instruction=instruction, position=position, hidden_size=lm.hidden_size,
                      num_layers=lm.num_layers, embeds=emb[n_head:].contiguous(), model=lm.model_id,
                      method="peft-import")


def _import_prefix(emb, cfg: dict, meta: dict, strip: str, lm, instruction: str, wpath: Path) -> PrefixPrompt:
    L, H, D = lm.num_layers, lm.num_kv_heads, lm.head_dim
    if cfg.get("num_transformer_submodules", 1) not in (1, None):
        raise ArtifactError(f"{wpath}: an encoder-decoder prefix (num_transformer_submodules=2) does not fit a causal LM")
    if emb.dim() != 2 or emb.shape[1] != 2 * L * H * D:
        raise ArtifactError(f"{wpath}: prefix of width {emb.shape[-1]} does not fit the model "
                            f"(layers {L} x 2 x kv_heads {H} x head_dim {D} = {2 * L * H * D})")
    keys, values = peft_weight_to_prefix(emb, L, H)
    n_head = int(meta.get("header_virtual_tokens", len(lm.encode(strip)) if strip else 0)) if strip else 0
    return PrefixPrompt(instruction=instruction, position="after_header" if strip else "prepend",
                        hidden_size=lm.hidden_size, num_layers=L, keys=keys[:, :, n_head:].contiguous(),
                        values=values[:, :, n_head:].contiguous(), model=lm.model_id, method="peft-import")
