"""Generation: OpenAI's sampling parameters and trimtab's batched decoding loop.

``SamplingParams`` (``sampling.py``) is shared by the CLI and the server; ``generate``
(``generate.py``) completes prompts with a KV cache. Neither module imports torch when it is
imported (``generate`` does when called), so the CLI parses its options fast.
"""

from __future__ import annotations

# Imported eagerly, after the submodule: the package attribute ``generate`` is then the
# function, not the module of the same name (which stays importable by its full path).
from trimtab.generation.generate import Completion, generate
from trimtab.generation.sampling import SamplingParams, add_sampling_arguments, sampling_from_args

__all__ = [
    "Completion",
    "SamplingParams",
    "add_sampling_arguments",
    "generate",
    "sampling_from_args",
]
