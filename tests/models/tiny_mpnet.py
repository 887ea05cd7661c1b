"""A tiny MPNet encoder (all-mpnet-base-v2's architecture) and its tokenizer, built from a config.

Shared by the split-archive tests (tests/models/test_archives.py) and the method tests
(tests/methods/test_mpnet.py); nothing is downloaded. The tokenizer numbers its special tokens
as MPNet's does (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2): MPNet's embeddings treat id 1 as padding
when they number positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIALS = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]
WORDS = (
    "review terrible awful broke great love works product it is okay for the price nothing "
    "special battery lasts a long time but screen scratches easily stars rating : # , . !"
).split()
VOCAB = {token: i for i, token in enumerate([*SPECIALS, *dict.fromkeys(WORDS)])}


def tiny_mpnet_tokenizer() -> Any:
    """A word-level tokenizer that frames a text as ``<s> ... </s>``, like MPNet's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", VOCAB["<s>"]), ("</s>", VOCAB["</s>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="[UNK]",
        mask_token="<mask>",
    )


def tiny_mpnet_config(**overrides: object) -> Any:
    """2 layers, 32 wide, 4 heads: all-mpnet-base-v2's config, shrunk."""
    from transformers import MPNetConfig

    values: dict[str, object] = dict(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=514, relative_attention_num_buckets=32,
        pad_token_id=VOCAB["<pad>"], bos_token_id=VOCAB["<s>"], eos_token_id=VOCAB["</s>"],
    )  # fmt: skip
    values.update(overrides)
    return MPNetConfig(**values)


def save_tiny_mpnet(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised masked-LM MPNet and its tokenizer saved in ``folder``, as the
    all-mpnet-base-v2 folder is laid out (config.json says MPNetForMaskedLM)."""
    import torch
    from transformers import MPNetForMaskedLM

    torch.manual_seed(seed)
    MPNetForMaskedLM(tiny_mpnet_config()).save_pretrained(folder, safe_serialization=True)
    tiny_mpnet_tokenizer().save_pretrained(folder)
    return folder
