"""Native OpenELM for transformers: Apple's module tree, state_dict keys and numerics, without remote code.

The decoder stack and the causal LM live here; the layers of one block are in :mod:`elmtune.models.layers` and the
mask handling in :mod:`elmtune.models.attention_mask`.

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
packing masks) and ``position_ids`` (positions restarting within a row and no mask: sequences packed without
padding, attended separately), uses ``scaled_dot_product_attention`` with ``is_causal`` when nothing is padded, lets
SDPA handle grouped-query attention without copying K/V heads, and keeps a transformers ``Cache``.

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
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging

from elmtune.models.attention_mask import (
    is_packed,
    packed_rows_mask,
    packed_segments,
    positions_from_mask,
    sdpa_attention_mask,
)
from elmtune.models.configuration import OpenELMConfig
from elmtune.models.layers import (
    OpenELMDecoderLayer,
    OpenELMRMSNorm,
    OpenELMRotaryEmbedding,
)
from elmtune.models.linear import OpenELMLinear

logger = logging.get_logger(__name__)


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
        """Apple's ``reset_parameters``, applied by transformers to every submodule.

        Std in_features^-0.5 for Linear, d^-0.5 for the embedding, and d^-0.5 * (2L)^-0.5 for the residual output
        projections (``out_proj``, ``proj_2``); norms start at one. Decided per leaf module: transformers skips a
        custom model's modules that hold no parameters of their own, so a rule set on the attention or FFN module
        would never run.
        """
        d = self.config.model_dim
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=d**-0.5)
        elif isinstance(module, OpenELMRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, nn.Linear) and module.weight is not None:
            if getattr(module, "residual_output", False):
                std = d**-0.5 * (2 * self.config.num_transformer_layers) ** -0.5
            else:
                std = module.in_features**-0.5
            init.normal_(module.weight, mean=0.0, std=std)


#: The output field (and forward argument) that holds the KV cache in the installed transformers: ``cache`` from 5.24
#: on, ``past_key_values`` before.
CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(BaseModelOutputWithPast)} else "past_key_values"


def _one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache given under either name; both at once is an error."""
    if cache is not None and past_key_values is not None:
        raise TypeError("give the KV cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def _refuse_attention_weights(output_attentions: bool | None) -> None:
    """Raise for ``output_attentions=True``: SDPA computes no attention weights to return."""
    if output_attentions:
        raise ValueError("OpenELM uses scaled_dot_product_attention and cannot return attention weights")


class OpenELMModel(OpenELMPreTrainedModel):
    """The decoder stack (``transformer.*`` in checkpoints): token embedding, decoder layers, final norm.

    Args:
        config: The model config.
    """

    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.model_dim)
        self.layers = nn.ModuleList([OpenELMDecoderLayer(config, i) for i in range(config.num_transformer_layers)])
        self.norm = OpenELMRMSNorm(config.model_dim)
        self.rotary = OpenELMRotaryEmbedding(config.head_dim, config.rope_freq_constant, config.rope_max_length)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding (vocab, d)."""
        return self.token_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the token embedding (transformers calls this when resizing the vocabulary)."""
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
            position_ids: (B, L); derived from ``attention_mask`` (or the cache length) when omitted. Without a mask,
                positions that restart within a row mark sequences packed without padding, attended separately.
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

        segments = None
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                position_ids = positions_from_mask(attention_mask, length)
            else:
                position_ids = torch.arange(past, past + length, device=inputs_embeds.device).expand(batch, length)
        elif is_packed(position_ids, attention_mask, past):  # sequences packed without padding
            if batch == 1:
                segments = packed_segments(position_ids)
            else:
                attention_mask = packed_rows_mask(position_ids)
        attn_mask, is_causal = sdpa_attention_mask(attention_mask, length, past, inputs_embeds.device)
        rotary = self.rotary(position_ids)

        hidden = inputs_embeds
        all_hidden: list[torch.Tensor] = []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden = layer(hidden, rotary, attn_mask=attn_mask, is_causal=is_causal, cache=cache, segments=segments)
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

    Args:
        config: The model config.
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.token_embeddings.weight"}

    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__(config)
        self.transformer = OpenELMModel(config)
        self.lm_head = OpenELMLinear(config.model_dim, config.vocab_size, bias=False)
        self.post_init()
        if self.generation_config is not None and self.generation_config.pad_token_id is None:
            self.generation_config.pad_token_id = 0

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding (vocab, d)."""
        return self.transformer.token_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the token embedding (transformers calls this when resizing the vocabulary)."""
        self.transformer.token_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        """The output head ``lm_head`` (d -> vocab)."""
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        """Replace the output head (transformers calls this when resizing the vocabulary)."""
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

        Any keyword not listed here raises ``TypeError``.

        Args:
            input_ids: Token ids (B, L); give exactly one of ``input_ids`` and ``inputs_embeds``.
            attention_mask: (B, past + L) with 1 for real tokens, or a 4-D (B, 1, L, past + L) mask.
            position_ids: (B, L); derived from ``attention_mask`` (or the cache length) when omitted. Without a mask,
                positions that restart within a row mark sequences packed without padding, attended separately.
            cache: A transformers ``Cache``; created when ``use_cache`` is true.
            inputs_embeds: Embedded inputs (B, L, d).
            labels: (B, L) targets aligned with ``input_ids``; shifted by one inside.
            use_cache: Whether to return a cache (defaults to the config's ``use_cache`` outside training).
            output_hidden_states: Also return the input of every layer and the final normalised output.
            logits_to_keep: Compute logits only for the last N positions (0: all), or for the given indices.
            past_key_values: The cache under its name in transformers before 5.24 (give one of the two).
            cache_position: Accepted from older ``generate`` loops and not needed (see :meth:`OpenELMModel.forward`).
            output_attentions: Only false/None: SDPA returns no attention weights.
            return_dict: ``False`` returns the output as a tuple.
            num_items_in_batch: Switches the loss to sum / num_items_in_batch (gradient accumulation).

        Returns:
            ``CausalLMOutputWithPast`` with ``loss``, ``logits`` (B, L', vocab), ``hidden_states`` and the cache under
            :data:`CACHE_FIELD`.
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
            # Shift the labels, not the logits: position t predicts token t + 1, and the last position predicts
            # nothing (-100). Slicing the logits instead would copy the (B, L-1, V) tensor forward and backward.
            flat_logits = logits.float().reshape(-1, logits.shape[-1])  # (B*L, vocab)
            targets = F.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1).to(flat_logits.device)  # (B*L,)
            if num_items_in_batch is None:
                loss = F.cross_entropy(flat_logits, targets, ignore_index=-100)
            else:
                loss = F.cross_entropy(flat_logits, targets, ignore_index=-100, reduction="sum")
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


__all__ = [
    "CACHE_FIELD",
    "OpenELMForCausalLM",
    "OpenELMModel",
    "OpenELMPreTrainedModel",
    "saved_keys",
]
