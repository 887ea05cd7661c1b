"""Feature caching for ``freeze``: run the frozen trunk once per example, train only the top.

With ``freeze`` the embeddings and the lower blocks never change, so their output for an
example is the same at every epoch. :class:`FrozenTrunk` splits the model at the first trainable
block: :meth:`FrozenTrunk.features` runs the trunk (embeddings + frozen blocks) without
gradients, in eval mode, optionally under bf16 autocast; the training loop caches the result
per example and, at every step, calls :meth:`FrozenTrunk.forward_top`, which runs only the top
``N`` blocks, the final norm and the head. A step then costs ``N/L`` of a full forward pass
and no backward pass through the trunk at all.

What is cached (the input of the first trainable module)
---------------------------------------------------------
``N > 0``: the hidden states entering block ``L-N``, ``[batch, seq, hidden]``.

``N = 0``: the output of the last block, *before* the final norm (``freeze`` trains the final
norm; BERT has none), reduced to what the head reads:

* causal LM: ``[batch, seq, hidden]``; :meth:`~FrozenTrunk.forward_top` applies the final norm
  and returns the final hidden states, so the loop applies ``lm_head`` only where the loss needs
  it (vocabulary-sized logits are never cached);
* Llama classification: the hidden state of the token that ``LlamaForSequenceClassification``
  pools (the rightmost token that is not ``pad_token_id``), ``[batch, hidden]``;
* BERT classification: the first token's hidden state (the pooler's input), ``[batch, hidden]``;
  the pooler trains with the head, so its output cannot be cached;
* MPNet classification: the first token's (``<s>``) hidden state, which its classification head
  reads, ``[batch, hidden]``.

Per-example caching: with right padding a real token never attends to padding, so the features
of one example do not depend on the batch it was computed in; the loop may store
``features[i, :length_i]`` and pad again (with anything) when it batches them differently.

How transformers is reused, and how fragile that is
---------------------------------------------------
Nothing about attention is re-implemented: the blocks are the model's own modules, called the
way ``LlamaModel.forward`` / ``BertModel.forward`` / ``MPNetModel.forward`` call them in
transformers 5.23. Llama: the mask comes from ``transformers.masking_utils.create_causal_mask``
and the rotary position embeddings from ``model.model.rotary_emb(hidden, position_ids)``, with
the default positions ``arange(seq)``. BERT: ``model.bert.embeddings(input_ids)`` and
``masking_utils.create_bidirectional_mask``. MPNet: the same, plus the relative position bias
that ``MPNetEncoder.forward`` computes once from the sequence length
(``encoder.compute_position_bias``) and passes to every block; its table
(``encoder.relative_attention_bias``) is shared by all blocks, so ``freeze`` keeps it frozen and
it belongs to the trunk. Padding does not change it for real tokens (it depends on distances
only), so per-example caching holds. These helpers follow
``config._attn_implementation`` (eager, sdpa, flash), as the model's own forward does. What is
copied is the *glue* of those ``forward`` methods (which helper builds the mask, which
arguments a block takes, how the classification head pools): a transformers release that
changes it could make the split silently differ from the full model. The pinned version and
the equivalence tests (``forward_top(features(x))`` against the full model, to 1e-5) guard that;
:meth:`FrozenTrunk.supported` accepts only the exact classes whose glue was checked, and for
any other architecture the training loop runs the frozen trunk at every step instead.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch

from trimtab.errors import TrimtabError
from trimtab.models.tasks import Task, is_generative

Kind = Literal["causal", "classify"]  # what the head does: next-token logits or class logits


def _families() -> dict[type, tuple[str, Kind]]:
    """Model classes whose forward glue :class:`FrozenTrunk` reproduces: class -> (family, task)."""
    from transformers import (
        BertForSequenceClassification,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        MPNetForSequenceClassification,
    )

    return {
        LlamaForCausalLM: ("llama", "causal"),
        LlamaForSequenceClassification: ("llama", "classify"),
        BertForSequenceClassification: ("bert", "classify"),
        MPNetForSequenceClassification: ("mpnet", "classify"),
    }


class FrozenTrunk:
    """Splits a model whose lower blocks are frozen into (trunk, top).

    Trunk features are computed once per example (no grad, in eval mode, optionally under
    autocast) and cached by the caller; training runs only the top ``trainable_layers`` blocks
    plus the final norm and head on the cached features. ``model`` must already be frozen that
    way (``apply_method(model, MethodSpec("freeze", trainable_layers=N), task)``): a trainable
    parameter in the trunk would silently stop training, so it is refused.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        trainable_layers: int,
        task: Task,
        *,
        autocast_dtype: torch.dtype | None = None,
    ):
        if not self.supported(model):
            raise ValueError(
                f"FrozenTrunk does not support {type(model).__name__}; check "
                f"FrozenTrunk.supported() and run the whole model instead"
            )
        family, kind = _families()[type(model)]
        if ("causal" if is_generative(task) else "classify") != kind:
            raise TrimtabError(f"task {task} does not fit a {type(model).__name__}")
        self.model: Any = model  # transformers classes: attributes nn.Module can't type
        self.family = family
        self.task: Kind = kind
        self.autocast_dtype = autocast_dtype
        self.base: Any = self.model.base_model
        self.layers = self._blocks()
        count = len(self.layers)
        if not 0 <= trainable_layers <= count:
            raise TrimtabError(
                f"trainable_layers: {trainable_layers} is outside 0 to {count}, the number of "
                f"transformer layers of {type(model).__name__}"
            )
        self.trainable_layers = trainable_layers
        self.split = count - trainable_layers  # index of the first trainable block
        thawed = [name for name, param in self._trunk_parameters() if param.requires_grad]
        if thawed:
            raise ValueError(
                f"the trunk below block {self.split} must be frozen before caching its features, "
                f"but {len(thawed)} of its parameters train (first: {thawed[0]}); "
                f"apply the 'freeze' method first"
            )

    # --- public --------------------------------------------------------------------------

    @staticmethod
    def supported(model: torch.nn.Module) -> bool:
        """True if the trunk of ``model`` can be split off and cached (Llama, BERT, MPNet)."""
        family = _families().get(type(model))
        if family is None:
            return False
        hf: Any = model
        config = hf.config
        if family[0] == "bert":
            # a decoder or cross-attending BERT needs other masks; the classifier reads the pooler
            return (
                not config.is_decoder
                and not getattr(config, "add_cross_attention", False)
                and hf.bert.pooler is not None
            )
        return True

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The trunk's output for a batch: what the first trainable module reads (see module doc).

        Computed without gradients and in eval mode (no dropout), whatever mode the model is in.
        """
        with torch.no_grad(), self._eval(), self._autocast(input_ids.device):
            if self.family == "llama":
                return self._llama_features(input_ids, attention_mask)
            return self._encoder_features(input_ids, attention_mask)

    def forward_top(
        self,
        features: torch.Tensor,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the trainable top on cached features, with gradients, in the model's mode.

        Returns classification logits ``[batch, num_labels]``, or for a causal LM the final
        hidden states ``[batch, seq, hidden]`` (after the final norm; apply ``lm_head`` to the
        positions the loss needs).

        ``input_ids`` matters only for Llama classification with ``trainable_layers > 0``:
        ``LlamaForSequenceClassification`` pools the rightmost token that is not the pad token,
        which only the token ids tell. Without them the last token the attention mask keeps is
        pooled: the same token unless an example *ends* with the pad token id (SmolLM2-Instruct's
        pad is its eos ``<|im_end|>``), so pass them whenever the batch has them.
        """
        features = features.to(self._dtype)
        if self.family == "llama":
            return self._llama_top(features, attention_mask, input_ids)
        return self._encoder_top(features, attention_mask)

    # --- llama ---------------------------------------------------------------------------

    def _llama_run(self, hidden, attention_mask, blocks):
        """Run ``blocks`` as LlamaModel.forward does (no cache, default positions)."""
        from transformers.masking_utils import create_causal_mask

        if len(blocks) == 0:
            return hidden
        position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        mask = create_causal_mask(
            config=self.base.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            past_key_values=None,
            position_ids=position_ids,
        )
        position_embeddings = self.base.rotary_emb(hidden, position_ids=position_ids)
        for block in blocks:
            hidden = block(
                hidden,
                attention_mask=mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                past_key_values=None,
                use_cache=False,
            )
        return hidden

    def _llama_features(self, input_ids, attention_mask):
        hidden = self.base.embed_tokens(input_ids)
        hidden = self._llama_run(hidden, attention_mask, self.layers[: self.split])
        if self.trainable_layers == 0 and self.task == "classify":
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            return hidden[rows, self._pooled_index(input_ids, hidden.shape[0])]
        return hidden

    def _llama_top(self, features, attention_mask, input_ids):
        hidden = self._llama_run(features, attention_mask, self.layers[self.split :])
        if self.task == "causal":
            return self.base.norm(hidden)
        if self.trainable_layers > 0:  # features hold every position: pool as the model does
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            if input_ids is not None:
                index = self._pooled_index(input_ids, hidden.shape[0])
            else:  # the last real token: the same unless an example ends with the pad token
                index = attention_mask.shape[-1] - 1 - attention_mask.flip(-1).argmax(-1)
            hidden = hidden[rows, index]
        return self.model.score(self.base.norm(hidden))

    def _pooled_index(self, input_ids, batch_size):
        """The position LlamaForSequenceClassification (GenericForSequenceClassification) pools."""
        pad = self.model.config.get_text_config().pad_token_id
        if pad is None:
            if batch_size != 1:
                raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined.")
            return torch.tensor([-1], device=self.model.device)
        non_pad = (input_ids != pad).to(torch.int32)
        positions = torch.arange(input_ids.shape[-1], device=input_ids.device, dtype=torch.int32)
        return (positions * non_pad).argmax(-1)

    # --- bert, mpnet ----------------------------------------------------------------------

    def _encoder_run(self, hidden, attention_mask, blocks):
        """Run ``blocks`` as BertModel.forward / MPNetModel.forward do (bidirectional mask;
        MPNet adds the relative position bias its encoder computes from the sequence length)."""
        from transformers.masking_utils import create_bidirectional_mask

        if len(blocks) == 0:
            return hidden
        mask = create_bidirectional_mask(
            config=self.base.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        extra = (self.base.encoder.compute_position_bias(hidden),) if self.family == "mpnet" else ()
        for block in blocks:
            hidden = block(hidden, mask, *extra)
            if isinstance(hidden, tuple):  # MPNet blocks (and transformers 4 BERT) return tuples
                hidden = hidden[0]
        return hidden

    def _encoder_features(self, input_ids, attention_mask):
        hidden = self.base.embeddings(input_ids=input_ids)
        hidden = self._encoder_run(hidden, attention_mask, self.layers[: self.split])
        return hidden[:, 0] if self.trainable_layers == 0 else hidden

    def _encoder_top(self, features, attention_mask):
        hidden = features.unsqueeze(1) if self.trainable_layers == 0 else features
        hidden = self._encoder_run(hidden, attention_mask, self.layers[self.split :])
        if self.family == "mpnet":
            return self.model.classifier(hidden)  # its head reads the first token (<s>)
        pooled = self.base.pooler(hidden)  # reads the first token
        return self.model.classifier(self.model.dropout(pooled))

    # --- helpers -------------------------------------------------------------------------

    def _blocks(self) -> torch.nn.ModuleList:
        if self.family == "llama":
            return self.base.layers[: self.base.config.num_hidden_layers]
        return self.base.encoder.layer

    def _trunk_parameters(self):
        embeddings = self.base.embed_tokens if self.family == "llama" else self.base.embeddings
        shared = [self.base.encoder.relative_attention_bias] if self.family == "mpnet" else []
        for module in [embeddings, *shared, *self.layers[: self.split]]:
            yield from module.named_parameters()

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @contextlib.contextmanager
    def _eval(self):
        """Eval mode for the duration (no dropout in the trunk), then each module's own mode."""
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)
