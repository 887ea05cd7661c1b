"""Continuous batching on one loaded model: requests join and leave between decode steps.

A :class:`Lane` holds the jobs waiting for one model and the rows it is decoding. Each
:meth:`Lane.step` admits waiting jobs while there is room (their prompts are prefilled and
merged into the running batch), picks one token for every row, hands each job its new text,
drops the rows that ended, and runs one decode step for the rest. A long completion never
holds short ones back: they leave as soon as they end and new ones take their places.

The engine runs one lane per loaded model on its thread; ``generate`` (evaluation) runs a lane
directly. Classification models have no rows: a job is answered at admission with the
label and the class distribution as its log-probabilities.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trimtab.generation import batch
from trimtab.generation.sampler import Picker, pick
from trimtab.generation.sequence import Sequence, token_logprob, top_logprobs
from trimtab.generation.types import Delta, EngineError, TokenLogprob

if TYPE_CHECKING:
    import torch

    from trimtab.generation.sampling import SamplingParams


@dataclass
class RowEnd:
    """A sampled completion ended: what best_of ranks by and usage counts."""

    index: int
    tokens: int
    logprob_sum: float


@dataclass
class Job:
    """A request as a lane runs it: token ids, the rows it asks for, where results go."""

    ids: list[int]
    params: SamplingParams
    post: Callable[[list[Delta | RowEnd] | BaseException | None], None]  # None: all done
    prompt_text: str = ""  # what echo returns before the completion
    adapter: str | None = None  # the PEFT adapter name on a shared base (None: the base)
    grammar: Any = None  # a compiled constraint (Grammar.start() per row), or None
    cancelled: bool = False
    on_end: Callable[[], None] | None = None  # e.g. the pool releasing the adapter
    clip_to_context: bool = False  # lower max_tokens to what the context leaves, not refuse
    open_rows: int = 0

    @property
    def wants_logprobs(self) -> bool:
        # best_of ranks completions by log-probability: it needs them even if not returned
        return self.params.logprobs is not None or self.params.samples > self.params.n


@dataclass
class _Row:
    job: Job
    index: int
    seq: Sequence
    picker: Picker


@dataclass
class Lane:
    """The waiting jobs and the running batch of one model."""

    model: Any
    tokenizer: Any
    eos: set[int]
    max_rows: int = 16
    context: int | None = None  # the model's most positions, if known
    labels: list[str] | None = None  # a classification model's labels
    waiting: deque[Job] = field(default_factory=deque)
    rows: list[_Row] = field(default_factory=list)
    part: batch.Part | None = None
    vocab: int = 0
    admitting: list[Job] = field(default_factory=list)  # out of waiting, not yet in rows

    def __post_init__(self) -> None:
        pad = self.tokenizer.pad_token_id
        self.pad = pad if pad is not None else next(iter(self.eos), 0)
        config = self.model.config
        self.vocab = int(getattr(config.get_text_config(), "vocab_size", 0) or len(self.tokenizer))

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.rows)

    def step(self) -> None:
        """Admit, pick, hand out, drop the ended rows, decode one step."""
        self._drop_cancelled()
        self._admit()
        if not self.rows or self.part is None:
            return
        want = any(r.job.wants_logprobs for r in self.rows)
        picked = pick(self.part.logits, [r.picker for r in self.rows], want_logprobs=want)
        posts: dict[int, tuple[Job, list[Delta | RowEnd]]] = {}
        for k, row in enumerate(self.rows):
            token = picked.tokens[k]
            tops = top_logprobs(self.tokenizer, picked.top_ids[k], picked.top_values[k])
            row.seq.push(token, picked.logprobs[k], tops)
            if row.seq.finish is None:
                row.picker.record(token)
            posts.setdefault(id(row.job), (row.job, []))[1].extend(self._out(row))
        for job, items in posts.values():
            if items:
                job.post(items)
        self._end_rows([k for k, r in enumerate(self.rows) if r.seq.finish is not None])
        if self.rows and self.part is not None:
            self._limit_context()
            batch.decode(
                self.model,
                self.part,
                [r.seq.ids[-1] for r in self.rows],
                self._adapter_names([r.job for r in self.rows]),
            )

    def fail(self, error: BaseException) -> None:
        """Hand an error to every job of the lane and empty it (the batch cannot go on)."""
        jobs = {id(r.job): r.job for r in self.rows} | {id(j): j for j in self.waiting}
        jobs |= {id(j): j for j in self.admitting}
        self.rows, self.part, self.admitting = [], None, []
        self.waiting.clear()
        for job in jobs.values():
            job.post(error)
            if job.on_end:
                job.on_end()

    # --- admission ---------------------------------------------------------------------------

    def _admit(self) -> None:
        if self.rows and self.part is not None and not batch.can_merge(self.part.cache):
            return  # this model's cache cannot take rows mid-flight: wait until it empties
        admitted = self.admitting = []
        room = self.max_rows - len(self.rows)
        while self.waiting and (self.waiting[0].params.samples <= room or not self.rows):
            job = self.waiting.popleft()
            admitted.append(job)
            if not self._fits(job):
                admitted.pop()
                continue
            if self.labels is not None:
                self._classify(job)
                admitted.pop()
            elif job.params.max_tokens == 0 or (job.params.echo and job.wants_logprobs):
                self._echo(job)  # its own prefill: it needs the logits of every prompt position
                admitted.pop()
            room -= job.params.samples
            if room <= 0:
                break
        if admitted:
            names = self._adapter_names(admitted)
            part, _ = batch.prefill(
                self.model,
                [j.ids for j in admitted],
                [j.params.samples for j in admitted],
                pad=self.pad,
                adapters=names,
            )
            self._join(admitted, part, [[] for _ in admitted])
        self.admitting = []

    def _fits(self, job: Job) -> bool:
        """False (after telling the job) if prompt plus max_tokens exceed the model's context."""
        asked = len(job.ids) + job.params.max_tokens
        if self.context is None or asked <= self.context or self.labels is not None:
            return True  # (a classifier generates nothing: its tokenizer truncates the text)
        room = self.context - len(job.ids)
        if job.clip_to_context and room >= 1:  # chat without a limit: up to the context
            job.params = job.params.model_copy(update={"max_tokens": room})
            return True
        job.post(context_error(self.context, len(job.ids), job.params.max_tokens))
        if job.on_end:
            job.on_end()
        return False

    def _echo(self, job: Job) -> None:
        """Prefill one echo job alone, with its prompt's log-probabilities."""
        names = self._adapter_names([job])
        part, full = batch.prefill(
            self.model,
            [job.ids],
            [job.params.samples],
            pad=self.pad,
            adapters=names,
            all_logits=job.wants_logprobs,
        )
        prompt = self._prompt_logprobs(job, full) if full is not None else []
        if job.params.max_tokens == 0:
            items: list[Delta | RowEnd] = []
            for i in range(job.params.samples):
                items.append(Delta(i, job.prompt_text, list(prompt), "length"))
                items.append(RowEnd(i, 0, 0.0))
            job.post(items)
            job.post(None)
            if job.on_end:
                job.on_end()
            return
        self._join([job], part, [prompt])

    def _join(self, jobs: list[Job], part: batch.Part, prompts: list[list[TokenLogprob]]) -> None:
        """Make the rows of newly prefilled jobs and merge their cache into the batch."""
        from trimtab.generation.sampler import seed_for

        for job, prompt in zip(jobs, prompts):
            seed = seed_for(job.params)
            job.open_rows = job.params.samples
            echo = job.prompt_text if job.params.echo else ""
            first: list[Delta | RowEnd] = []
            for i in range(job.params.samples):
                matcher = job.grammar.start() if job.grammar is not None else None
                seq = Sequence(
                    self.tokenizer,
                    job.params.stop_sequences,
                    job.params.max_tokens,
                    self.eos,
                    want_logprobs=job.params.logprobs is not None,
                    text_base=len(echo),
                )
                picker = Picker.make(job.params, seed, i, self.vocab, matcher)
                self.rows.append(_Row(job, i, seq, picker))
                if echo:
                    first.append(Delta(i, echo, list(prompt)))
            if first:
                job.post(first)
        self.part = batch.merge(self.part, part)

    def _prompt_logprobs(self, job: Job, full: torch.Tensor) -> list[TokenLogprob]:
        """Each prompt token's log-probability given the ones before (None for the first)."""
        import torch

        ids, k = job.ids, job.params.logprobs or 0
        logp = torch.log_softmax(full[0, -len(ids) :].float(), dim=-1)
        out = []
        for t, token in enumerate(ids):
            offset = len(self.tokenizer.decode(ids[:t], skip_special_tokens=False)) if t else 0
            if t == 0:
                out.append(token_logprob(self.tokenizer, token, None, [], offset=offset))
                continue
            row = logp[t - 1]
            tops: list[Any] = []
            if k:
                values, top_ids = row.topk(k)
                tops = top_logprobs(self.tokenizer, top_ids.tolist(), values.tolist())
            out.append(token_logprob(self.tokenizer, token, float(row[token]), tops, offset=offset))
        return out

    def _classify(self, job: Job) -> None:
        """Answer with a label: greedy takes the likeliest, sampling draws from the classes."""
        from trimtab.generation.classify import answer

        job.post(answer(self.model, self.tokenizer, self.labels or [], job.prompt_text, job.params))
        job.post(None)
        if job.on_end:
            job.on_end()

    # --- rows --------------------------------------------------------------------------------

    def _out(self, row: _Row) -> list[Delta | RowEnd]:
        text, logprobs = row.seq.take()
        items: list[Delta | RowEnd] = []
        if text or logprobs or row.seq.finish:
            items.append(Delta(row.index, text, logprobs, row.seq.finish))
        if row.seq.finish:
            items.append(RowEnd(row.index, row.seq.generated, row.seq.logprob_sum))
        return items

    def _end_rows(self, ended: list[int]) -> None:
        if not ended:
            return
        gone = set(ended)
        for k in ended:
            job = self.rows[k].job
            job.open_rows -= 1
            if job.open_rows == 0 and not job.cancelled:
                job.post(None)
                if job.on_end:
                    job.on_end()
        keep = [k for k in range(len(self.rows)) if k not in gone]
        self.rows = [self.rows[k] for k in keep]
        if not self.rows:
            self.part = None
        elif self.part is not None:
            self.part = batch.select(self.part, keep)

    def _drop_cancelled(self) -> None:
        for job in [j for j in self.waiting if j.cancelled]:
            self.waiting.remove(job)
            job.post(None)
            if job.on_end:
                job.on_end()
        cancelled = {id(r.job): r.job for r in self.rows if r.job.cancelled}
        if not cancelled:
            return
        keep = [k for k, r in enumerate(self.rows) if not r.job.cancelled]
        self.rows = [self.rows[k] for k in keep]
        self.part = batch.select(self.part, keep) if self.rows and self.part else None
        for job in cancelled.values():
            job.post(None)  # the reader's iteration ends
            if job.on_end:
                job.on_end()

    def _limit_context(self) -> None:
        """Rows at the model's last position cannot take another token (defensive: submit
        checks prompt plus max_tokens against the context)."""
        if self.context is None or self.part is None:
            return
        full = [k for k in range(len(self.rows)) if int(self.part.following[k]) >= self.context]
        for k in full:
            self.rows[k].seq.finish_at_length()
            self.rows[k].job.post(self._out(self.rows[k]))
        self._end_rows(full)

    def _peft(self) -> bool:
        return hasattr(self.model, "peft_config")

    def _adapter_names(self, jobs: list[Job]) -> list[str] | None:
        """PEFT's ``adapter_names`` for rows of these jobs (None: the model has no adapters)."""
        if not self._peft():
            return None
        return [job.adapter or batch.BASE_ADAPTER for job in jobs]


def context_error(context: int, prompt: int, max_tokens: int) -> EngineError:
    """The error of a request whose prompt and max_tokens exceed the model's context."""
    return EngineError(
        f"This model's maximum context length is {context} tokens; this request asks for "
        f"{prompt + max_tokens} ({prompt} in the prompt, {max_tokens} for the completion). "
        "Shorten the prompt or lower max_tokens.",
        param="max_tokens",
    )
