"""How soft and prefix artifacts enter the forward pass (local models only).

`soft_prefix_kv` and `prefix_prefix_kv` build the key/value cache of a
prompt's constant part with soft vectors or per-layer key/values in it; the
trainer calls them with live parameters, the appliers with an artifact's
tensors, so training and inference place them identically.

    SoftPrompt,  after_header:  [header][soft[:s]][body][soft[s:]] | [input ...]
    SoftPrompt,  prepend:       [soft[:s]][header][body][soft[s:]] | [input ...]
    PrefixPrompt, after_header: [header][learned k/v][body]        | [input ...]
    PrefixPrompt, prepend:      [learned k/v][header][body]        | [input ...]
    LatePrompt,  after_header:  [header][ids -> late][body]        | [input ...]
    LatePrompt,  prepend:       [ids -> late][header][body]        | [input ...]

A LatePrompt's k positions hold its placeholder tokens `ids` in the layers below
its `layer`; at the input of that layer their hidden states are replaced by the
learned vectors (`late_prefix_kv`, a forward pre-hook installed and removed in
one call). Its cache is an ordinary prefix, and the keys/values below the layer
carry no gradient, so backpropagation stops there (for the input rows too).

body: the instruction, then the prompt's demonstrations as earlier turns (if any)
(`tensor_layout`). Everything left of `|` is cached once (batch 1); each input's
tokens follow.
"""

from __future__ import annotations


import torch

import threading
from contextlib import contextmanager

from ..artifacts import LatePrompt, PrefixPrompt, SoftPrompt
from ..errors import ArtifactError, ConfigError
from ..kv import KV
from ..lm.base import same_model
from ..render import render
from ..template import answer_sep, build_layout
from .apply import Applier, _labels_map, _prefixes, applies, labels_key, rows_after
from .backends import Cond


def header_kv(lm, layout) -> KV | None:
    """Cache of the constant chat header (computed once per run)."""
    if not layout.header:
        return None
    _, kv = lm.forward(ids=torch.tensor([layout.header], device=lm.device))
    return kv


def soft_prefix_kv(lm, layout, embeds: torch.Tensor, position: str = "after_header", split: int = -1,
                   header: KV | None = None) -> KV:
    """Cache of the constant part with soft vectors `embeds` (k, hidden) in it; batch 1.

    `header` may pass a precomputed header cache (after_header only). Differentiable in `embeds`.
    """
    soft = embeds.to(lm.device, lm.embedding_matrix().dtype)
    body_e = lm.embed(torch.tensor(layout.body, dtype=torch.long, device=lm.device))  # (len(body), hidden)
    k = soft.shape[0]
    s = k if split < 0 else min(split, k)
    if position == "prepend":
        head = lm.embed(torch.tensor(layout.header, dtype=torch.long, device=lm.device))
        seq, past = [soft[:s], head, body_e, soft[s:]], None
    else:
        seq = [soft[:s], body_e, soft[s:]]
        past = header if header is not None else header_kv(lm, layout)
    x = torch.cat(seq, dim=0).unsqueeze(0)  # (1, T, hidden)
    _, kv = lm.forward(embeds=x, past=past)
    return kv


def prefix_prefix_kv(lm, layout, keys: torch.Tensor, values: torch.Tensor, position: str = "after_header",
                     header: KV | None = None) -> KV:
    """Cache of the constant part with learned keys/values (layers, kv_heads, k, head_dim) in it; batch 1."""
    k = keys.shape[2]
    learned = KV([x.unsqueeze(0) for x in keys.unbind(0)], [x.unsqueeze(0) for x in values.unbind(0)],
                 torch.ones(1, k, dtype=torch.long, device=keys.device))
    if position == "prepend":
        past, ids = learned, layout.header + layout.body
    else:
        h = header if header is not None else header_kv(lm, layout)
        past, ids = (learned if h is None else h.cat(learned)), layout.body
    if not ids:
        return past
    _, out = lm.forward(ids=torch.tensor([ids], device=lm.device), past=past)
    return out


@contextmanager
def _at_layer_input(lm, layer: int, k: int, vectors: torch.Tensor | None = None):
    """While open, the next forward pass of this thread meets decoder layer `layer` with its first k positions'
    hidden states replaced by `vectors` (k, hidden), or, with vectors=None, records them (yields a dict that then
    holds "seen": (k, hidden)). Other threads' passes are left alone."""
    owner, seen = threading.get_ident(), {}

    def hook(module, args, kwargs):
        if threading.get_ident() != owner or "seen" in seen:
            return None
        h = args[0] if args else kwargs["hidden_states"]  # (1, T, hidden)
        seen["seen"] = h[0, :k].detach()
        if vectors is None:
            return None
        h = torch.cat([vectors.to(h.device, h.dtype).unsqueeze(0), h[:, k:]], dim=1)
        return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

    handle = lm.decoder_layers()[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()
    if "seen" not in seen:
        raise RuntimeError(f"decoder layer {layer} was not called: the late prompt did not enter the model")


def late_prefix_kv(lm, layout, embeds: torch.Tensor, layer: int, ids: list[int], position: str = "after_header",
                   header: KV | None = None) -> KV:
    """Cache of the constant part with `embeds` (k, hidden) entering at the input of decoder layer `layer`, where
    the layers below read the tokens `ids` (k); batch 1. Differentiable in `embeds`; layer 0 is `soft_prefix_kv`."""
    if layer >= lm.num_layers:
        raise ConfigError(f"layer {layer} does not exist: the model has {lm.num_layers} layers (0..{lm.num_layers - 1})")
    if position != "prepend" and header is None:
        header = header_kv(lm, layout)  # before the hook: it acts on one pass only
    placeholders = lm.embed(torch.tensor(ids, dtype=torch.long, device=lm.device))  # (k, hidden)
    with _at_layer_input(lm, layer, len(ids), embeds):
        return soft_prefix_kv(lm, layout, placeholders, position, -1, header)


@torch.no_grad()
def late_start(lm, layout, ids: list[int], layer: int, position: str = "after_header") -> torch.Tensor:
    """The hidden states (k, hidden) the tokens `ids` reach at the input of layer `layer` in the prompt's place:
    vectors that make a late prompt start as the text prompt `ids` (the embeddings of `ids` at layer 0)."""
    header = header_kv(lm, layout) if position != "prepend" else None
    placeholders = lm.embed(torch.tensor(ids, dtype=torch.long, device=lm.device))
    with _at_layer_input(lm, layer, len(ids)) as seen:
        soft_prefix_kv(lm, layout, placeholders, position, -1, header)
    return seen["seen"].float().clone()


def check_tensor_prompt(prompt, lm) -> None:
    """Refuse a soft/prefix prompt made for another model (id, hidden size or layers)."""
    if not same_model(prompt.model, lm):
        raise ArtifactError(f"soft prompt was trained for model {prompt.model!r}, not {lm.model_id!r}")
    if prompt.hidden_size and prompt.hidden_size != lm.hidden_size:
        raise ArtifactError(f"soft prompt has hidden size {prompt.hidden_size}, the model {lm.hidden_size}")
    if prompt.num_layers and prompt.num_layers != lm.num_layers:
        raise ArtifactError(f"soft prompt has {prompt.num_layers} layers, the model {lm.num_layers}")


def tensor_layout(lm, prompt, labels=None):
    """The layout a soft or prefix prompt's vectors sit in on `lm`: its instruction and demonstrations."""
    return build_layout(lm, prompt.instruction, prompt.demos, labels)


def tensor_rows(lm, prompt, layout, inputs, labels=None, answer_prefixes=None):
    """(rendered inputs, each input's token ids after [header][body]) under a soft or prefix prompt."""
    rendered = [render(prompt.instruction, prompt.demos, x, labels, a)
                for x, a in zip(inputs, _prefixes(inputs, answer_prefixes))]
    return rendered, rows_after(lm, rendered, layout.header + layout.body, f"a {prompt.type} prompt")


class TensorApplier(Applier):
    """Shared by soft and prefix prompts: rows are the rendered text after [header][body] (`tensor_layout`)."""

    def check(self, prompt, backend, task):
        if not backend.white_box:
            raise ConfigError(f"a {prompt.type} prompt is trained vectors for one local model; a text endpoint "
                              f"({backend.lm.model_id}) cannot take them: evaluate it on the local model, or serve "
                              "it through `promptlift serve --upstream local`")
        check_tensor_prompt(prompt, backend.lm)

    def prefix(self, prompt, lm, layout) -> KV:
        raise NotImplementedError

    @torch.no_grad()
    def condition(self, prompt, backend, task, inputs, answer_prefixes=None):
        lm = backend.lm
        labels = _labels_map(task)
        layout = tensor_layout(lm, prompt, labels)
        rendered, rows = tensor_rows(lm, prompt, layout, inputs, labels, answer_prefixes)
        prefix = backend.constant_prefix(prompt, labels_key(labels), lambda: self.prefix(prompt, lm, layout))
        return Cond(prefix, rows, answer_sep(lm, rendered[0]) if rendered else "",
                    [] if lm.has_chat_template else ["\n"])


@applies(SoftPrompt)
class SoftApplier(TensorApplier):
    def prefix(self, prompt, lm, layout):
        return soft_prefix_kv(lm, layout, prompt.embeds, prompt.position, prompt.split)


@applies(PrefixPrompt)
class PrefixApplier(TensorApplier):
    def prefix(self, prompt, lm, layout):
        return prefix_prefix_kv(lm, layout, prompt.keys.to(lm.device), prompt.values.to(lm.device), prompt.position)


@applies(LatePrompt)
class LateApplier(TensorApplier):
    def prefix(self, prompt, lm, layout):
        return late_prefix_kv(lm, layout, prompt.embeds, prompt.layer, prompt.ids, prompt.position)


__all__ = ["late_prefix_kv", "late_start", "LateApplier", "tensor_layout", "tensor_rows", "header_kv", "soft_prefix_kv", "prefix_prefix_kv", "check_tensor_prompt", "SoftApplier", "PrefixApplier"]
