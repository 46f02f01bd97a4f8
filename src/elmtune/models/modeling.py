"""Native OpenELM for transformers: Apple's module tree, state_dict keys and numerics, without remote code.

Module tree and keys (all Linear layers bias-free; the output head is the tied token embedding)::

    transformer.token_embeddings                     Embedding(vocab, d)
    transformer.layers.{i}.attn_norm                 RMSNorm(d)
    transformer.layers.{i}.attn.qkv_proj             Linear(d -> (n_q + 2 n_kv) * hd)   rows: Q | K | V
    transformer.layers.{i}.attn.q_norm / k_norm      RMSNorm(hd), shared by the heads of the layer
    transformer.layers.{i}.attn.out_proj             Linear(n_q * hd -> d)
    transformer.layers.{i}.ffn_norm                  RMSNorm(d)
    transformer.layers.{i}.ffn.proj_1                Linear(d -> 2 * ffn_i)              rows: gate | up
    transformer.layers.{i}.ffn.proj_2                Linear(ffn_i -> d)
    transformer.norm                                 RMSNorm(d)
    lm_head                                          Linear(d -> vocab); its weight *is* the token embedding when
                                                     share_input_output_layers (tied, never saved twice)

Unlike the hub code, attention honours ``attention_mask`` (2-D padding masks and 4-D masks such as block-diagonal
packing masks) and ``position_ids``, uses ``scaled_dot_product_attention`` with ``is_causal`` when nothing is padded,
lets SDPA handle grouped-query attention without copying K/V heads, and keeps a transformers ``Cache``.

The cache argument is ``cache`` in current transformers and ``past_key_values`` in older 5.x releases: every forward
accepts both (one code path) and returns the cache under the output field the installed transformers declares
(:data:`CACHE_FIELD`). Keyword arguments the model does not understand raise ``TypeError`` instead of being ignored.
"""

from __future__ import annotations

from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging

from elmtune.models.configuration import OpenELMConfig
from elmtune.models.geometry import NORM_EPS

logger = logging.get_logger(__name__)


class OpenELMRMSNorm(nn.Module):
    """RMSNorm as OpenELM computes it: statistics in fp32, cast back to the input dtype, then scale.

    ``y = weight * cast_back(x_f32 * rsqrt(mean(x_f32^2) + eps))``; the normalisation is one fused
    ``torch.nn.functional.rms_norm`` call.
    """

    def __init__(self, num_features: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (self.num_features,), eps=self.eps)
        return normed.type_as(x) * self.weight

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, eps={self.eps}"


class OpenELMRotaryEmbedding(nn.Module):
    """Rotate-half RoPE over the full head dimension, with cos/sin tables cached per device.

    The tables are fp32 and plain attributes (not buffers), so meta-device construction, ``to_empty`` and weight
    loading can never leave them stale: they are rebuilt on first use on each device and grow on demand.
    """

    def __init__(self, head_dim: int, base: float, max_length: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = float(base)
        self.max_length = max_length
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, device: torch.device, needed: int) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._tables.get(device)
        if cached is not None and cached[0].shape[0] >= needed:
            return cached
        length = max(self.max_length, needed if cached is None else max(needed, 2 * cached[0].shape[0]))
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        inv_freq = 1.0 / (self.base**exponent)  # (hd/2,)
        angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)  # (T, hd/2)
        angles = torch.cat((angles, angles), dim=-1)  # (T, hd)
        self._tables[device] = (angles.cos(), angles.sin())
        return self._tables[device]

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for ``position_ids`` (B, L), each (B, 1, L, hd) in fp32."""
        needed = int(position_ids.max()) + 1 if position_ids.numel() and position_ids.device.type != "meta" else 1
        cos, sin = self._table(position_ids.device, needed)
        return cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE in fp32 and cast back: ``x * cos + rotate_half(x) * sin``. x: (B, H, L, hd)."""
    x32 = x.float()
    return (x32 * cos + _rotate_half(x32) * sin).type_as(x)


class OpenELMMultiHeadCausalAttention(nn.Module):
    """Grouped-query attention of one layer, with its own head counts and per-head q/k RMSNorm."""

    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_q_heads = config.num_query_heads[layer_idx]
        self.num_kv_heads = config.num_kv_heads[layer_idx]
        rows = (self.num_q_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(config.model_dim, rows, bias=False)
        if config.normalize_qk_projections:
            self.q_norm = OpenELMRMSNorm(self.head_dim)
            self.k_norm = OpenELMRMSNorm(self.head_dim)
        else:
            self.q_norm = self.k_norm = None
        self.out_proj = nn.Linear(self.num_q_heads * self.head_dim, config.model_dim, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states)  # (B, L, (n_q + 2 n_kv) * hd)
        qkv = qkv.view(batch, length, self.num_q_heads + 2 * self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.num_q_heads, self.num_kv_heads, self.num_kv_heads], dim=1)  # (B, H*, L, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rotary
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, n_kv, past + L, hd)
        grouped = self.num_q_heads != self.num_kv_heads
        if grouped and q.device.type == "mps":
            # MPS SDPA kernels lack grouped-query support in several torch releases: expand K/V explicitly there.
            repeats = self.num_q_heads // self.num_kv_heads
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)  # (B, n_q, S, hd)
            grouped = False
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=grouped
        )  # (B, n_q, L, hd)
        out = out.transpose(1, 2).reshape(batch, length, self.num_q_heads * self.head_dim)
        return self.out_proj(out)


class OpenELMFeedForwardNetwork(nn.Module):
    """SwiGLU FFN of one layer: the first half of ``proj_1`` is the gate, the second half the up projection."""

    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        self.ffn_dim = config.ffn_dims[layer_idx]
        self.ffn_with_glu = config.ffn_with_glu
        out_rows = 2 * self.ffn_dim if self.ffn_with_glu else self.ffn_dim
        self.proj_1 = nn.Linear(config.model_dim, out_rows, bias=False)
        self.proj_2 = nn.Linear(self.ffn_dim, config.model_dim, bias=False)
        self.act = ACT2FN[config.activation_fn_name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.proj_1(x)  # (B, L, 2 * ffn) with GLU
        if self.ffn_with_glu:
            gate, up = hidden.chunk(2, dim=-1)
            hidden = self.act(gate) * up
        else:
            hidden = self.act(hidden)
        return self.proj_2(hidden)


class OpenELMDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: ``h = x + attn(attn_norm(x))``, ``out = h + ffn(ffn_norm(h))``."""

    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = OpenELMRMSNorm(config.model_dim)
        self.attn = OpenELMMultiHeadCausalAttention(config, layer_idx)
        self.ffn_norm = OpenELMRMSNorm(config.model_dim)
        self.ffn = OpenELMFeedForwardNetwork(config, layer_idx)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = True,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.attn_norm(hidden_states), rotary, attn_mask, is_causal, cache)
        return hidden_states + self.ffn(self.ffn_norm(hidden_states))


class OpenELMPreTrainedModel(PreTrainedModel):
    """Shared class attributes and Apple's weight initialisation."""

    config_class = OpenELMConfig
    config: OpenELMConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["OpenELMDecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _can_compile_fullgraph = False

    def _init_weights(self, module: nn.Module) -> None:
        """Apple's ``reset_parameters``: std in_features^-0.5 for Linear, d^-0.5 for the embedding, and
        d^-0.5 * (2L)^-0.5 for the residual output projections; norms start at one."""
        d = self.config.model_dim
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=d**-0.5)
        elif isinstance(module, OpenELMRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, (OpenELMMultiHeadCausalAttention, OpenELMFeedForwardNetwork)):
            residual_std = d**-0.5 * (2 * self.config.num_transformer_layers) ** -0.5
            first, last = (
                (module.qkv_proj, module.out_proj)
                if isinstance(module, OpenELMMultiHeadCausalAttention)
                else (module.proj_1, module.proj_2)
            )
            init.normal_(first.weight, mean=0.0, std=first.in_features**-0.5)
            init.normal_(last.weight, mean=0.0, std=residual_std)
        elif isinstance(module, nn.Linear) and module.weight is not None:  # the untied output head
            init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)


#: The output field (and forward argument) that holds the KV cache in the installed transformers: ``cache`` from 5.24
#: on, ``past_key_values`` before.
CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(BaseModelOutputWithPast)} else "past_key_values"


def _one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache given under either name; both at once is an error."""
    if cache is not None and past_key_values is not None:
        raise TypeError("give the KV cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def _refuse_attention_weights(output_attentions: bool | None) -> None:
    if output_attentions:
        raise ValueError("OpenELM uses scaled_dot_product_attention and cannot return attention weights")


def _positions_from_mask(mask_2d: torch.Tensor, length: int) -> torch.Tensor:
    """Positions that count only attended tokens: a padded row gets the positions it would have alone. (B, L)."""
    positions = mask_2d.long().cumsum(-1) - 1  # (B, past + L)
    return positions.clamp(min=0)[:, -length:]


def _attention_mask(
    attention_mask: torch.Tensor | None, batch: int, length: int, past: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """Turn the caller's mask into what SDPA needs: ``(bool mask (B|1, 1, L, past + L) or None, is_causal)``.

    No mask is materialised when nothing is padded: plain causal attention uses ``is_causal`` and a one-token decode
    step attends to the whole cache. A 4-D mask (bool, or additive float with 0 for "attend") is used as given, e.g. a
    block-diagonal packing mask.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
    else:
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        if attention_mask is None:
            if past == 0:
                return None, length > 1
            if length == 1:
                return None, False
        total = past + length
        key_pos = torch.arange(total, device=device)
        query_pos = torch.arange(past, total, device=device)
        mask = (key_pos[None, :] <= query_pos[:, None])[None, None]  # (1, 1, L, past + L)
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, -total:].bool()  # (B, 1, L, past + L)
    # A row with nothing to attend to (a left-pad query) would give NaN in SDPA: let it attend everywhere instead;
    # its output is ignored by the caller anyway.
    return mask | ~mask.any(dim=-1, keepdim=True), False


class OpenELMModel(OpenELMPreTrainedModel):
    """The decoder stack (``transformer.*`` in checkpoints)."""

    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.model_dim)
        self.layers = nn.ModuleList([OpenELMDecoderLayer(config, i) for i in range(config.num_transformer_layers)])
        self.norm = OpenELMRMSNorm(config.model_dim)
        self.rotary = OpenELMRotaryEmbedding(config.head_dim, config.rope_freq_constant, config.rope_max_length)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.token_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.token_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        *,
        past_key_values: Cache | None = None,
        cache_position: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPast | tuple[torch.Tensor, ...]:
        """Run the decoder stack.

        Args:
            input_ids: Token ids (B, L); give exactly one of ``input_ids`` and ``inputs_embeds``.
            attention_mask: (B, past + L) with 1 for real tokens, or a 4-D (B, 1, L, past + L) mask.
            position_ids: (B, L); derived from ``attention_mask`` (or the cache length) when omitted.
            cache: A transformers ``Cache``; created when ``use_cache`` is true.
            inputs_embeds: Embedded inputs (B, L, d).
            use_cache: Whether to return a cache (defaults to the config's ``use_cache`` outside training).
            output_hidden_states: Also return the input of every layer and the final normalised output.
            past_key_values: The cache under its name in transformers before 5.24 (give one of the two).
            cache_position: Accepted from older ``generate`` loops and not needed: positions come from
                ``position_ids``, the 2-D mask or the cache length.
            output_attentions: Only false/None: SDPA returns no attention weights.
            return_dict: ``False`` returns the output as a tuple.

        Returns:
            ``BaseModelOutputWithPast`` with ``last_hidden_state`` (B, L, d) and the cache under :data:`CACHE_FIELD`.
        """
        del cache_position  # redundant with the positions derived below
        _refuse_attention_weights(output_attentions)
        cache = _one_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.token_embeddings(input_ids)  # (B, L, d)
        batch, length, _ = inputs_embeds.shape
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and checkpointing:
            logger.warning_once("gradient checkpointing recomputes layers, so no KV cache is kept: use_cache=False")
            use_cache, cache = False, None
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0

        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                position_ids = _positions_from_mask(attention_mask, length)
            else:
                position_ids = torch.arange(past, past + length, device=inputs_embeds.device).expand(batch, length)
        attn_mask, is_causal = _attention_mask(attention_mask, batch, length, past, inputs_embeds.device)
        rotary = self.rotary(position_ids)

        hidden = inputs_embeds
        all_hidden: list[torch.Tensor] = []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden = layer(hidden, rotary, attn_mask=attn_mask, is_causal=is_causal, cache=cache)
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        output = BaseModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            **{CACHE_FIELD: cache if use_cache else None},
        )
        return output if return_dict is not False else output.to_tuple()


class OpenELMForCausalLM(OpenELMPreTrainedModel, GenerationMixin):
    """OpenELM with a language-model head.

    ``lm_head`` follows transformers' tied-weights convention: with ``share_input_output_layers`` (Apple's released
    models) its weight *is* the token embedding's, declared in ``_tied_weights_keys``, so ``get_output_embeddings``,
    ``tie_weights`` and ``resize_token_embeddings`` behave as for Llama, and checkpoints keep Apple's keys (the tied
    head is not saved).
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.token_embeddings.weight"}

    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__(config)
        self.transformer = OpenELMModel(config)
        self.lm_head = nn.Linear(config.model_dim, config.vocab_size, bias=False)
        self.post_init()
        if self.generation_config is not None and self.generation_config.pad_token_id is None:
            self.generation_config.pad_token_id = 0

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.token_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.transformer.token_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @property
    def head_is_tied(self) -> bool:
        """Whether the output head shares the token embedding's weight (``share_input_output_layers``)."""
        return bool(self.config.share_input_output_layers)

    def output_weight(self) -> torch.Tensor:
        """The (vocab, d) matrix that produces logits: ``lm_head.weight`` (the tied embedding's base weight)."""
        return self.lm_head.weight

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        *,
        past_key_values: Cache | None = None,
        cache_position: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> CausalLMOutputWithPast | tuple[torch.Tensor, ...]:
        """Logits (B, L, vocab) and, with ``labels``, the mean next-token cross-entropy (ignore index -100).

        Args:
            labels: (B, L) targets aligned with ``input_ids``; shifted by one inside.
            logits_to_keep: Compute logits only for the last N positions (0: all), or for the given indices.
            num_items_in_batch: Switches the loss to sum / num_items_in_batch (gradient accumulation).

        See :meth:`OpenELMModel.forward` for the other arguments; any other keyword raises ``TypeError``.
        """
        outputs = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            cache_position=cache_position,
            output_attentions=output_attentions,
        )
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)  # (B, L, vocab)

        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(shift_logits.device)
            if num_items_in_batch is None:
                loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
            else:
                loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
                loss = loss / num_items_in_batch
        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **{CACHE_FIELD: outputs.get(CACHE_FIELD)},
        )
        return output if return_dict is not False else output.to_tuple()


def saved_keys(model: OpenELMForCausalLM) -> list[str]:
    """The state-dict keys a checkpoint of ``model`` holds, in order: Apple's keys (a tied head is not saved)."""
    keys = list(model.state_dict())
    return [k for k in keys if k != "lm_head.weight"] if model.head_is_tied else keys


def count_parameters(model: nn.Module) -> int:
    """Parameters of a model, each shared tensor counted once."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


__all__ = [
    "CACHE_FIELD",
    "OpenELMForCausalLM",
    "OpenELMModel",
    "OpenELMPreTrainedModel",
    "OpenELMRMSNorm",
    "apply_rotary",
    "count_parameters",
    "saved_keys",
]
