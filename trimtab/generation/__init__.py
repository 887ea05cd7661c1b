"""Generation: the one engine behind ``trimtab serve``, ``complete``, ``chat`` and ``eval``.

- ``sampling.py``: :class:`SamplingParams`, OpenAI's sampling parameters (CLI, server, eval);
- ``types.py``: what the engine takes and gives (requests, deltas, results, errors);
- ``pool.py``: model ids, loading on first use, LoRA adapters sharing one base (LRU);
- ``engine.py``: the engine thread and the streams its callers read;
- ``intake.py``: a request checked and tokenized before it is queued;
- ``lane.py``: continuous batching on one model; ``batch.py``: its KV cache (join, leave);
- ``sequence.py``: one completion's text, stop sequences, logprobs; ``sampler.py``: per-row
  picking; ``constraint.py``: response_format through outlines-core; ``classify.py``: labels;
- ``generate.py``: :func:`generate`, a list of prompts through a lane (evaluation).

Importing this package does not import torch (the CLI parses its options fast).
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
