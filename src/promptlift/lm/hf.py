"""HFModel: a local transformers causal LM, white-box.

Besides the LM verbs (generate, score) it exposes what gradient methods need:
`embed` (input embeddings), `forward` from ids or `inputs_embeds` on top of a
reusable key/value prefix (`KV`), and `logits` applied only to the hidden
states that are scored. Weights are frozen.

Devices and dtypes (`device=`, `dtype=`; "auto" picks):
    CUDA available  -> "cuda" (the current GPU), bfloat16 when the GPU supports it
                       (Ampere and newer), else float32
    else MPS        -> "mps", float32 (bf16 needs a recent macOS, fp16 risks overflow
                       in log-probabilities; a 135M-1B model is fast enough in fp32)
    else            -> "cpu", float32 (bf16 matmuls are ~100x slower on CPUs without
                       AMX/AVX512-BF16, such as this project's CI machines)
Whatever the dtype, `logits` returns float32, so scores are compared at full precision.
Every tensor promptlift creates for the model is created on `lm.device`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..kv import KV
from .base import LM, GenerationConfig, PromptLike
from .budget import Budget, ledger_of
from .decode import decode
from .scoring import score_candidates


DEVICES = "auto, cpu, cuda, cuda:N, mps"
_OOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError  # torch.OutOfMemoryError: 2.5+
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" | "cpu" | "cuda" | "cuda:N" | "mps" -> a torch.device that exists here.

    "auto": CUDA if available, else MPS, else CPU. A device that is not there (cuda
    without CUDA, a GPU index past the last one) or a malformed name is a `ConfigError`.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise ConfigError("device 'mps' is not available here (needs Apple silicon and a torch built with MPS); "
                              "use --device cpu or auto")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        index = name[5:]
        if index and not index.isdigit():
            raise ConfigError(f"unknown device {device!r}; expected one of: {DEVICES}")
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
            raise ConfigError(f"device {device!r} requested but CUDA is not available (torch {torch.__version__}, "
                              f"{built}); use --device cpu or auto")
        n = torch.cuda.device_count()
        i = int(index) if index else torch.cuda.current_device()
        if i >= n:
            raise ConfigError(f"device {device!r} does not exist: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
        return torch.device("cuda", i)
    raise ConfigError(f"unknown device {device!r}; expected one of: {DEVICES}")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """"auto" | "float32" | "bfloat16" | "float16" (or fp32/bf16/fp16) -> a torch.dtype for `device`.

    "auto": bfloat16 on a CUDA GPU that supports it, float32 everywhere else.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ConfigError(f"unsupported dtype {dtype}; expected float32, bfloat16 or float16")
        return dtype
    name = (dtype or "auto").strip().lower()
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of: auto, float32, bfloat16, float16")
    return DTYPES[name]


class HFModel(LM):
    """A frozen transformers causal LM.

    Args:
      name: bundled alias (`smollm2-135m`, `gemma3-270m`), a local model
        directory, or a .gguf file.
      model, tokenizer: pass an already built model instead (tests use a tiny
        random one); then `name` is only its id.
      budget: shared counters; a new one if omitted.
      cache: call cache for `generate`/`score` (default: the shared SQLite file for
        models loaded by name; none for a model object passed in, whose weights
        the name does not identify).
      device: "auto" | "cpu" | "cuda" | "cuda:N" | "mps" (see the module docstring).
        For a model object passed in, "auto" leaves it where it is.
      dtype: "auto" | "float32" | "bfloat16" | "float16". For a model object
        passed in, "auto" leaves its dtype as it is.
      device_map: passed to `from_pretrained` as is (e.g. "auto" to spread a model
        too large for one GPU over several, through accelerate); then `device`
        must stay "auto" and `lm.device` is where the output head lives.
    """

    def __init__(self, name: str = "smollm2-135m", *, model: nn.Module | None = None, tokenizer=None,
                 budget: Budget | None = None, cache=None, device: str = "auto", dtype: str = "auto",
                 device_map=None):
        from .cache import CallCache

        if device_map is not None and (device or "auto") != "auto":
            raise ConfigError("pass either device or device_map, not both")
        target = resolve_device(device)
        self.identity: str | None = None  # content identity of the weights (models.model_identity); None if unknown
        self.path = None  # the directory the weights were loaded from
        self.cache = cache if cache is not None else CallCache(enabled=False if model is not None else None)
        if model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from ..models import model_identity, resolve

            path = resolve(name)
            torch_dtype = resolve_dtype(dtype, target)
            try:
                tokenizer = AutoTokenizer.from_pretrained(path)
                if device_map is not None:
                    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, device_map=device_map)
                else:
                    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(target)
            except (OSError, ValueError) as e:
                raise ModelError(f"cannot load model {name!r} from {path}: {str(e).splitlines()[0]}") from None
            except _OOM:
                raise ModelError(f"model {name!r} does not fit in {target} memory; try --device cpu or a "
                                 "smaller --dtype") from None
            self.path = path
            self.identity = model_identity(name)
        else:
            if tokenizer is None:
                raise ModelError("HFModel(model=...) also needs tokenizer=...")
            explicit_device = (device or "auto") != "auto"
            explicit_dtype = (dtype or "auto") != "auto"
            if explicit_device or explicit_dtype:
                model = model.to(device=target if explicit_device else None,
                                 dtype=resolve_dtype(dtype, target) if explicit_dtype else None)
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.model_id = name
        self.budget = budget or Budget()
        self.base = getattr(model, model.base_model_prefix)
        self.head = model.get_output_embeddings()
        cfg = model.config
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.hidden_size: int = cfg.hidden_size
        self.num_layers: int = cfg.num_hidden_layers
        self.num_kv_heads: int = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim: int = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.max_length: int = getattr(cfg, "max_position_embeddings", 2048)
        self.eos_ids: set[int] = self._eos_ids()

    # --- white-box access -------------------------------------------------------------
    @property
    def is_white_box(self) -> bool:
        return True

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def device(self) -> torch.device:
        """Where inputs go (the device of the output head)."""
        return self.head.weight.device

    def _cache_id(self) -> str:
        """What cached answers are keyed by: the weights' content identity and the dtype they run in
        (a bf16 answer is not an fp32 answer; a changed model folder is another model)."""
        return f"{self.identity or self.model_id}|{str(self.dtype).removeprefix('torch.')}"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's embeddings (inputs_embeds and key/values are cast to it)."""
        return self.embedding_matrix().dtype

    def embedding_matrix(self) -> torch.Tensor:
        """(vocab, hidden) input embedding weights."""
        return self.model.get_input_embeddings().weight

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., ) token ids -> (..., hidden) input embeddings, scaled as the model scales them."""
        return self.model.get_input_embeddings()(ids)

    def decoder_layers(self) -> nn.ModuleList:
        """The decoder's blocks, bottom first (`num_layers` of them): where a late prompt's hook goes.

        Read through transformers' `get_decoder()` (Llama/SmolLM2, Gemma-3, Qwen, ... all keep them in
        `.layers`); a model that keeps its blocks elsewhere is a ConfigError.
        """
        get = getattr(self.model, "get_decoder", None)
        decoder = get() if callable(get) else self.base
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, nn.ModuleList) or len(layers) != self.num_layers:
            raise ConfigError(f"model {self.model_id!r} ({type(self.model).__name__}) does not expose its "
                              f"{self.num_layers} decoder layers as `get_decoder().layers`; a prompt that enters at "
                              "an intermediate layer cannot be placed in it")
        return layers

    def forward(self, ids: torch.Tensor | None = None, embeds: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        """Run the decoder on new positions after an optional cached prefix.

        ids: (B, T) or embeds: (B, T, hidden); mask: (B, T), 1 = real (right padding).
        past: cache of earlier positions, batch B or 1 (broadcast).
        Returns hidden states (B, T, hidden) after the final norm, and the cache of
        past + new positions. Positions continue from each row's real past length.
        """
        dev = self.device
        # inputs made elsewhere (a prompt loaded on CPU, fp32 soft parameters) follow the model
        if ids is not None:
            ids = ids.to(dev)
        if embeds is not None:
            embeds = embeds.to(dev, self.dtype)
        x = ids if ids is not None else embeds
        B, T = x.shape[0], x.shape[1]
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.long, device=dev)
        else:
            mask = mask.to(dev)
        if past is not None:
            past = past.to(dev, self.dtype)
            if past.batch_size == 1 and B > 1:
                past = past.expand(B)
        past_mask = past.mask if past is not None else torch.zeros(B, 0, dtype=torch.long, device=dev)
        total = past_mask.shape[1] + T
        if total > self.max_length:
            raise ModelError(f"prompt of {total} tokens is longer than the model's context ({self.max_length})")
        full_mask = torch.cat([past_mask, mask], dim=1)
        position_ids = (past_mask.sum(1, keepdim=True) + mask.cumsum(1) - 1).clamp(min=0)
        if past is not None:
            cache = past.to_hf()
        else:
            from transformers import DynamicCache

            cache = DynamicCache()  # full (non-sliding) layers, so every position stays readable
        out = self.base(input_ids=ids, inputs_embeds=embeds, attention_mask=full_mask,
                        position_ids=position_ids, past_key_values=cache, use_cache=True)
        ledger_of(self).charge(forward=1, prompt_tokens=int(mask.sum()))
        return out.last_hidden_state, KV.from_hf(out.past_key_values, full_mask)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., vocab) in float32. Apply only to positions that are scored."""
        z = self.head(hidden.to(self.head.weight.dtype)).float()
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    # --- text in, text out --------------------------------------------------------------
    def render(self, prompt: PromptLike) -> str:
        """Chat messages -> the text the model reads, by the one rendering (`promptlift.render`): the chat
        template with the assistant turn opened (a final assistant message is continued), or the plain
        `Input:/Output:` format for models without a template. A string is used as it is."""
        if isinstance(prompt, str):
            return prompt
        from ..render import from_messages
        from ..template import to_text

        return to_text(self, from_messages(prompt))

    def encode(self, text: str, *, bos: bool = False) -> list[int]:
        """Tokenize without adding special tokens (chat templates write their own)."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if bos and self.tokenizer.bos_token_id is not None and self._adds_bos():
            ids = [self.tokenizer.bos_token_id] + ids
        return ids

    def _adds_bos(self) -> bool:
        bos = self.tokenizer.bos_token_id
        probe = self.tokenizer("a").input_ids
        return bool(probe) and probe[0] == bos

    def _eos_ids(self) -> set[int]:
        ids = set()
        for t in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(t, int):
                ids.add(t)
            elif isinstance(t, (list, tuple)):
                ids.update(int(i) for i in t)
        for tok in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid >= 0:
                ids.add(tid)
        return ids

    def generate(self, prompts: Sequence[PromptLike], config: GenerationConfig | None = None) -> list[list[str]]:
        config = config or GenerationConfig()
        texts = [self.render(p) for p in prompts]
        keys = [self.cache.key(self._cache_id(), {"verb": "generate", "text": t, **config.__dict__}) for t in texts]
        out: list = [self.cache.get(k) if self.cache.enabled else None for k in keys]
        todo = [i for i, o in enumerate(out) if o is None]
        ledger_of(self).charge(cached_calls=len(prompts) - len(todo))
        if todo:
            rows = [self.encode(texts[i], bos=isinstance(prompts[i], str)) for i in todo]
            for i, o in zip(todo, decode(self, None, rows, config)):
                out[i] = o
                self.cache.put(keys[i], o)
            ledger_of(self).charge(calls=len(todo))
        return out

    def score(self, prompt: PromptLike, continuations: Sequence[str]) -> list[float]:
        text = self.render(prompt)
        key = self.cache.key(self._cache_id(), {"verb": "score", "text": text, "continuations": list(continuations)})
        hit = self.cache.get(key) if self.cache.enabled else None
        if hit is not None:
            ledger_of(self).charge(cached_calls=1)
            return hit
        ids = self.encode(text, bos=isinstance(prompt, str))
        cands = [self.encode(c) for c in continuations]
        with torch.no_grad():
            s = score_candidates(self, None, [ids], [cands])[0].tolist()
        self.cache.put(key, s)
        ledger_of(self).charge(calls=1)
        return s
