"""``trimtab train``: load, make trainable, train, evaluate, checkpoint, export.

:func:`train` is the whole recipe: the CLI only builds a :class:`TrainConfig` and calls it.
It runs in three parts around one :class:`Session` (everything a run holds): :func:`_setup`
(data, model, method, optimizer; every batch-size problem is found before a model is loaded),
:func:`_step` (one optimizer step over an accumulated batch) and :func:`_evaluate_and_save`.
What is specific to a method is the method object's (:mod:`trimtab.methods.method`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trimtab.data.prepared import label_names
from trimtab.errors import TrimtabError
from trimtab.files import staged_dir, write_text
from trimtab.methods import TrainingMethod, method_for, trainable_parameters
from trimtab.models import resolve_model
from trimtab.models.batching import autocast
from trimtab.models.loading import Adapter, load_model
from trimtab.models.precision import decide_precision
from trimtab.models.runs import RunFolder
from trimtab.models.scoring import score_labels
from trimtab.models.tasks import is_generative
from trimtab.training import batches as b
from trimtab.training import checkpoint as ckpt
from trimtab.training import saving
from trimtab.training.config import BatchPlan, TrainConfig, dump_config, load_config, plan_batches
from trimtab.training.dataset import Data, encode_splits, read_splits
from trimtab.training.loop import (
    Dist,
    Objective,
    Progress,
    TrainingDiverged,
    TrainingInterrupted,
    all_reduce,
    clip_gradients,
    device_for,
    evaluate,
    init_distributed,
    l1_penalty,
    loss_units,
    make_optimizer,
    make_scheduler,
    seed_everything,
    steady_malloc,
    to_device,
)
from trimtab.training.run import default_run_dir, model_card


@dataclass
class TrainResult:
    """Where the run is and how it went."""

    run_dir: Path
    final: Path
    results: dict[str, Any]


@dataclass
class Session:
    """Everything one run holds, shared by setup, the steps and evaluation."""

    config: TrainConfig
    run: RunFolder
    d: Dist
    device: torch.device
    log: Any
    progress: bool
    parent: dict[str, Any] | None = None  # run.json facts of the run this one starts from
    adapter_base: str | None = None  # what trimtab.json names as the base of the weights
    data: Data = field(init=False)
    tokenizer: Any = None
    method: TrainingMethod = field(init=False)
    model: torch.nn.Module = field(init=False)
    objective: Objective = field(init=False)
    runner: Any = field(init=False)  # the objective, or DistributedDataParallel around it
    params: list[torch.nn.Parameter] = field(default_factory=list)
    optimizer: Any = None
    scheduler: Any = None
    plan: BatchPlan = field(init=False)
    sampler: b.LengthGroupedSampler = field(init=False)
    bf16: bool = False
    total: int = 0
    steps_per_epoch: int = 0
    state: ckpt.LoopState = field(default_factory=ckpt.LoopState)
    bar: Progress | None = None
    started: float = 0.0
    window: tuple[float, float] = (0.0, 0.0)  # (start time, tokens) of the speed window
    step_loss: float = float("nan")

    @property
    def causal(self) -> bool:
        return is_generative(self.config.data.task)

    def say(self, text: str) -> None:
        if self.progress and self.d.main:
            (self.log or (lambda s: print(s, flush=True)))(text)


def train(
    config: TrainConfig | None,
    *,
    resume: Path | None = None,
    progress: bool = True,
    log: Any = None,
) -> TrainResult:
    """Train per ``config`` (or continue the run folder ``resume`` from its last checkpoint).

    The run folder is locked for the whole run (:class:`~trimtab.models.runs.RunLockedError`
    at once if another process trains it). Ctrl-C marks the run ``interrupted`` and raises
    :class:`~trimtab.training.loop.TrainingInterrupted`, which says how to resume.
    """
    d = init_distributed()
    steady_malloc()
    run, config = _open_run(config, resume)
    seed_everything(config.seed)
    resolved = resolve_model(config.model.name)  # an unknown model fails before data is read
    records = read_splits(config)
    if resume is None and not _packed(config):  # examples = lines: check batches right now
        config = plan_batches(config, len(records["train"]), d.world)[0]
    with run.lock() if d.main else contextlib.nullcontext():
        if resume is None and run.info_file.exists():
            raise TrimtabError(
                f"{run.path}: a run already exists there; resume it with "
                f"--resume {run.path} or choose another run_dir"
            )
        s = Session(config, run, d, device_for(d), log, progress)
        if resolved.source == "run" and resolved.path is not None:
            s.parent, s.adapter_base = _lineage(resolved.path, resolved.run_meta or {}, config)
        try:
            _setup(s, records, resume)
            _train_steps(s)
            if s.bar is not None:
                s.bar.close()
            return _finish(s)  # a Ctrl-C while final/ is written also says how to resume
        except KeyboardInterrupt:
            raise TrainingInterrupted(_interrupted(s)) from None
        finally:
            if s.bar is not None:
                s.bar.close()


# --- setup -----------------------------------------------------------------------------------


def _open_run(config: TrainConfig | None, resume: Path | None) -> tuple[RunFolder, TrainConfig]:
    if resume is not None:
        run = RunFolder(Path(resume))
        if not run.config_file.is_file():
            raise TrimtabError(f"{resume}: not a trimtab run folder (no config.yaml) to resume")
        return run, load_config(run.config_file)
    if config is None:
        raise TrimtabError("train: give a config, or a run folder to resume")
    return RunFolder(config.run_dir or default_run_dir(config)), config


def _lineage(
    folder: Path, meta: dict[str, Any], config: TrainConfig
) -> tuple[dict[str, Any], str | None]:
    """A run that starts from a fine-tuned run (``folder``, its final/): what run.json says
    (``parent_run``; ``base_model``, the pretrained model however many runs back), and the
    model a new LoRA adapter goes on (the parent's own weights when they are full weights)."""
    root = meta.get("base_model") or str(folder)
    parent_run = meta.get("run") or str(folder.parent if folder.name == "final" else folder)
    full_weights = not (folder / "adapter_config.json").is_file()
    adapter_base = str(folder) if full_weights and config.method.name == "lora" else root
    return {"parent_run": parent_run, "base_model": root}, adapter_base


def _packed(config: TrainConfig) -> bool:
    """Packed lm data has as many examples as its tokens fill: known after tokenizing only."""
    return config.data.task == "lm" and config.data.pack


def _setup(s: Session, records: dict[str, list[Any]], resume: Path | None) -> None:
    config = s.config
    classify = config.data.task == "classify"
    labels = label_names(records["train"]) if classify else None
    method = method_for(config.method.spec())
    adapter: Adapter = "train" if method.name == "lora" else "merge"  # a parent's goes on
    loaded = load_model(config.model.name, config.data.task, labels=labels, adapter=adapter)
    s.tokenizer, s.data = loaded.tokenizer, encode_splits(config, records, loaded.tokenizer, labels)
    # Resolved and checked before loading for line-counted data (train()); packed lm data is
    # counted only now. Idempotent on a resolved config (a resumed run's).
    config, s.plan = plan_batches(config, len(s.data.train), s.d.world)
    if resume is None:
        config = config.model_copy(update={"run_dir": s.run.path})
    if config.micro_batch_tokens == "auto":
        budget = CPU_MICRO_BATCH_TOKENS if s.device.type == "cpu" else None
        config = config.model_copy(update={"micro_batch_tokens": budget})
    s.config = config
    can_set = getattr(loaded.model, "_can_set_attn_implementation", None)  # via PEFT too
    if can_set is None or can_set():  # MPNet's cannot: it keeps its own attention
        loaded.model.set_attn_implementation(_attention(config, s.device, s.data))
    s.method = method
    s.model = method.apply(loaded.model, config.data.task).to(s.device)
    if config.gradient_checkpointing:
        _checkpoint_activations(s.model, config.model.name)
    if config.precision == "auto":
        decision = decide_precision(s.device)
        s.bf16 = decision.precision == "bf16"
        if s.d.main:
            s.say(decision.describe())
    else:
        s.bf16 = config.precision == "bf16"
    method.prepare(s.model, bf16=s.bf16)
    said = method.precompute(
        s.model,
        config.data.task,
        [s.data.train, s.data.valid],
        lambda items: to_device(b.collate(items, s.data.pad_id), s.device),
        bf16=s.bf16,
    )
    if said:
        s.say(said)
    _make_optimizer(s)
    if resume is not None:
        _restore(s)
    _start(s)


def _token_budget(config: TrainConfig) -> int | None:
    budget = config.micro_batch_tokens
    return budget if isinstance(budget, int) else None  # resolved in _setup; never "auto" here


def _checkpoint_activations(model: Any, name: str) -> None:
    """Transformers' own gradient checkpointing, non-reentrant: it needs no input that
    requires grad, so it works with frozen embeddings (LoRA, freeze)."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(hf, "supports_gradient_checkpointing", False):
        raise TrimtabError(
            f"gradient_checkpointing: model {name} ({type(hf).__name__}) does not support it"
        )
    hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def _make_optimizer(s: Session) -> None:
    config, plan = s.config, s.plan
    s.sampler = b.LengthGroupedSampler(
        [len(e.input_ids) for e in s.data.train],
        plan.micro,
        config.seed,
        rank=s.d.rank,
        world_size=s.d.world,
    )
    # The micro-batches left over by accumulation make a last, shorter step: every example
    # trains every epoch (its loss is normalised by its own units, as every step's is).
    s.steps_per_epoch = -(-len(s.sampler) // plan.accum)
    s.total = int(config.epochs) * s.steps_per_epoch
    if config.max_steps:
        s.total = min(s.total, config.max_steps)
    s.params = [p for p in s.model.parameters() if p.requires_grad]
    s.optimizer = make_optimizer(s.params, config.optim, float(config.optim.lr))
    warmup = config.optim.warmup
    warmup_steps = round(warmup * s.total) if warmup < 1 else int(warmup)
    s.scheduler = make_scheduler(s.optimizer, config.optim.schedule, warmup_steps, s.total)
    s.objective = Objective(
        s.model,
        causal=s.causal,
        trunk=s.method.top,
        loss=config.data.loss,
        ordinal_weight=config.data.ordinal_weight,
    )
    s.runner = s.objective
    if s.d.world > 1:
        s.runner = torch.nn.parallel.DistributedDataParallel(s.objective)


def _restore(s: Session) -> None:
    latest = ckpt.latest_checkpoint(s.run.path)
    ckpt.remove_partial(s.run.path)
    if latest is not None:
        s.state = ckpt.load_checkpoint(latest, s.model, s.optimizer, s.scheduler)
        if s.d.main:
            s.run.truncate_metrics(s.state.metrics_lines)
            s.say(f"resumed {s.run.path} from {latest.name}")


def _start(s: Session) -> None:
    config, plan, data = s.config, s.plan, s.data
    trainable, everything = trainable_parameters(s.model)
    short = len(s.sampler) % plan.accum
    if s.d.main:
        info = {
            "name": s.run.path.name,
            "base_model": config.model.name,
            "task": config.data.task,
            "method": config.method.name,
            "labels": data.labels,
            "train_examples": len(data.train),
            "valid_examples": len(data.valid),
            "trainable_parameters": trainable,
            "total_parameters": everything,
            "world_size": s.d.world,
            "micro_batch_size": plan.micro,
            "accumulation": plan.accum,
            "last_step_micro_batches": short or plan.accum,
            "total_steps": s.total,
            "bf16": s.bf16,
            "device": str(s.device),
            "feature_cache": s.method.top is not None,
        }
        s.run.start(dump_config(config), info | (s.parent or {}))
        s.say(
            f"{config.model.name} {config.method.name} ({trainable:,} of {everything:,} "
            f"parameters train), {len(data.train):,} examples, {config.epochs} epochs x "
            f"{s.steps_per_epoch} steps, batch {config.batch_size} = {plan.micro} x "
            f"{plan.accum} x {s.d.world}"
            + (f" (each epoch's last step: {short} x {plan.micro} x {s.d.world})" if short else "")
            + f", lr {config.optim.lr:g}, {'bf16' if s.bf16 else 'fp32'}; run {s.run.path}"
        )
    s.bar = Progress(s.total, s.state.step, s.progress and s.d.main, config.log_every, write=s.log)
    s.started = time.perf_counter() - s.state.elapsed
    s.window = (time.perf_counter(), 0.0)


EAGER_MAX_TOKENS = 256
# micro_batch_tokens auto on a CPU. SmolLM2 LoRA, one step on 16 reviews of up to 512 tokens,
# bf16: peak RSS 11.4 GB in one pass, 5.1 GB at 2,048 tokens, 3.2 GB at 1,024; a whole epoch
# of bench/train.py's sft: 11.7 GB → 4.7 GB at the same speed.
CPU_MICRO_BATCH_TOKENS = 1024


def _attention(config: TrainConfig, device: torch.device, data: Data) -> str:
    """On CPU, eager attention measured 15-30% faster per step than SDPA's flash kernel
    (SmolLM2, 48-160 tokens, bf16 autocast), but it keeps a T x T matrix per layer for the
    backward pass: 4 GB more at 500 tokens. So eager only while every sequence is short."""
    if config.model.attention != "auto":
        return config.model.attention
    longest = max((len(e.input_ids) for e in data.train + data.valid), default=0)
    return "eager" if device.type == "cpu" and longest <= EAGER_MAX_TOKENS else "sdpa"


# --- the steps -------------------------------------------------------------------------------


def _collate(s: Session, items: list[Any]) -> dict[str, torch.Tensor]:
    batch = b.collate(items, s.data.pad_id)
    batch.update(s.method.extras(items))
    return to_device(batch, s.device)


def _train_steps(s: Session) -> None:
    config, state = s.config, s.state
    while state.step < s.total:
        batches = s.sampler.batches(state.epoch)
        while state.batch_in_epoch < len(batches) and state.step < s.total:
            group = batches[state.batch_in_epoch : state.batch_in_epoch + s.plan.accum]
            _step(s, [_collate(s, [s.data.train[i] for i in idx]) for idx in group])
            state.batch_in_epoch += len(group)
            epoch_end = state.batch_in_epoch >= len(batches)
            due_eval = (
                state.step % config.eval_every == 0 if config.eval_every else epoch_end
            ) or state.step == s.total
            if due_eval:
                if _evaluate_and_save(s):
                    return
            elif config.save_every and state.step % config.save_every == 0 and s.d.main:
                saving.checkpoint(s)
            if state.step < s.total and saving.pause_requested(s):
                saving.pause(s)
        if state.batch_in_epoch >= len(batches):
            state.epoch += 1
            state.batch_in_epoch = 0


def _step(s: Session, micro_batches: list[dict[str, torch.Tensor]]) -> None:
    """One optimizer step: forward and backward over the micro-batches, normalised by the
    global loss units of this step, then clip, check, update and log."""
    config, d, state = s.config, s.d, s.state
    micro_batches = [
        piece for mb in micro_batches for piece in b.split_by_tokens(mb, _token_budget(config))
    ]
    units = sum(loss_units(mb, s.causal) for mb in micro_batches)
    units = all_reduce([units], d, s.device)[0]
    loss_sum = correct = count = tokens = 0.0
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = s.runner.no_sync() if d.world > 1 and not last else contextlib.nullcontext()
        with sync, autocast(s.device, s.bf16):
            part, hits, n = s.runner(batch)
            loss = part * (d.world / max(units, 1.0))
            if config.optim.l1:
                loss = loss + config.optim.l1 * l1_penalty(s.params) / len(micro_batches)
        loss.backward()
        loss_sum += part.item()
        correct += float(hits)
        count += float(n)
        tokens += float(batch["attention_mask"].sum())
    loss_sum, correct, count, tokens = all_reduce([loss_sum, correct, count, tokens], d, s.device)
    s.step_loss = loss_sum / max(count, 1.0)
    grad_norm = clip_gradients(s.params, config.optim.max_grad_norm)
    if not (math.isfinite(s.step_loss) and s.step_loss <= config.max_loss) or not math.isfinite(
        grad_norm
    ):
        raise TrainingDiverged(_diverged(s.run, state.step + 1, s.step_loss))
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.tokens += int(tokens)
    start, window_tokens = s.window[0], s.window[1] + tokens
    speed = window_tokens / max(time.perf_counter() - start, 1e-9)
    s.window = (start, window_tokens)
    lr = s.scheduler.get_last_lr()[0]
    assert s.bar is not None
    s.bar.update(state.step, s.step_loss, speed, lr)
    if d.main and (state.step % config.log_every == 0 or state.step == s.total):
        accuracy = "train_mean_token_accuracy" if s.causal else "train_accuracy"
        s.run.log(
            {
                "step": state.step,
                "epoch": state.epoch + state.batch_in_epoch / max(len(s.sampler), 1),
                "train_loss": round(s.step_loss, 6),
                accuracy: round(correct / max(count, 1), 6),
                "lr": lr,
                "tokens_per_second": round(speed, 1),
                "grad_norm": round(grad_norm, 6),
            }
        )
        state.metrics_lines += 1
        s.window = (time.perf_counter(), 0.0)


def _diverged(run: RunFolder, step: int, loss: float) -> str:
    last = ckpt.latest_checkpoint(run.path)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    message = (
        f"training stopped at step {step}: the loss is {loss} (NaN or exploding); "
        f"{kept}. Lower optim.lr or raise optim.warmup, then start again or "
        f"--resume {run.path}"
    )
    if run.info_file.exists():
        run.update(status="failed", error=message)
    return message


def _interrupted(s: Session) -> str:
    """Mark the run interrupted (main rank) and say where it stands and how to go on."""
    last = ckpt.latest_checkpoint(s.run.path) if s.run.path.is_dir() else None
    step = s.state.step
    kept = f"the last checkpoint kept is {last}" if last else "no checkpoint yet"
    if s.d.main and s.run.info_file.exists():
        s.run.update(
            status="interrupted",
            interrupted_step=step,
            last_checkpoint=str(last) if last else None,
        )
    if not s.run.config_file.is_file():
        return f"interrupted before training started: nothing to resume in {s.run.path}"
    return (
        f"interrupted at step {step} of {s.total}; {kept}. "
        f"Continue with: trimtab train --resume {s.run.path}"
    )


# --- evaluation and saving -------------------------------------------------------------------


def _valid_scores(s: Session) -> dict[str, float]:
    """valid_loss; valid_accuracy: of the labels (classify, or sft on a few labels: the
    likeliest label after the prompt against the true one); valid_mean_token_accuracy
    (OpenAI's name) for sft and lm."""
    data = s.data
    scores = evaluate(
        s.objective, data.valid, data.pad_id, s.device, s.bf16, extras=s.method.extras
    )
    if not s.causal:
        return scores
    out = {
        "valid_loss": scores["valid_loss"],
        "valid_mean_token_accuracy": scores["valid_accuracy"],
    }
    if data.scored is not None:
        prompts, answers, labels = data.scored
        was_training = s.model.training
        logp = score_labels(
            s.model,
            s.tokenizer,
            prompts,
            labels,
            max_length=s.config.model.max_length,
            bf16=s.bf16,
        )
        s.model.train(was_training)
        picked = [labels[i] for i in logp.argmax(-1).tolist()]
        out["valid_accuracy"] = sum(p == a for p, a in zip(picked, answers)) / len(answers)
    return out


def _evaluate_and_save(s: Session) -> bool:
    """Evaluate (rank 0), keep the best, checkpoint; True when early stopping says stop."""
    state = s.state
    stop = 0.0
    if s.d.main:
        if s.data.valid:
            scores = _valid_scores(s)
            s.run.log(
                {"step": state.step, "epoch": state.epoch}
                | {k: round(v, 6) for k, v in scores.items()}
            )
            state.metrics_lines += 1
            accuracy = scores.get("valid_accuracy", scores.get("valid_mean_token_accuracy"))
            assert s.bar is not None
            s.bar.message(
                f"step {state.step}: valid loss {scores['valid_loss']:.4f}, accuracy {accuracy:.4f}"
            )
            stop = float(_track_best(s, scores["valid_loss"]))
        saving.checkpoint(s)
    if s.d.world > 1:
        stop = all_reduce([stop], s.d, s.device)[0]
    return stop > 0


def _track_best(s: Session, loss: float) -> bool:
    """Keep the best model by validation loss; True when early stopping says stop."""
    config, state = s.config, s.state
    if state.best_score is None or loss < state.best_score:
        state.best_score, state.best_step, state.bad_evals = loss, state.step, 0
        if config.keep_best:
            saving.export(s, s.run.best)
        return False
    state.bad_evals += 1
    patience = config.early_stopping_patience
    if patience and state.bad_evals >= patience:
        assert s.bar is not None
        s.bar.message(
            f"early stopping: no improvement in {state.bad_evals} evaluations; "
            f"best step {state.best_step}"
        )
        return True
    return False


def _finish(s: Session) -> TrainResult:
    config, state, run = s.config, s.state, s.run
    elapsed = time.perf_counter() - s.started
    results: dict[str, Any] = {
        "steps": state.step,
        "epochs": round(state.epoch + state.batch_in_epoch / max(1, len(s.sampler)), 3),
        "train_seconds": round(elapsed, 1),
        "tokens": state.tokens,
        "tokens_per_second": round(state.tokens / max(elapsed, 1e-9), 1),
        "train_loss": round(s.step_loss, 6) if state.step else None,
        "best_step": state.best_step,
    }
    evaluated = [m for m in run.metrics() if "valid_loss" in m] if s.d.main else []
    if evaluated:
        best = min(evaluated, key=lambda m: m["valid_loss"])
        for key in ("valid_loss", "valid_accuracy", "valid_mean_token_accuracy"):
            if key in best:
                results[key] = best[key]
    if s.d.main:
        if config.keep_best and state.best_step is not None and run.best.is_dir():
            with staged_dir(run.final) as tmp:
                shutil.copytree(run.best, tmp, dirs_exist_ok=True)
        else:
            saving.export(s, run.final)
        run.update(status="completed", results=results)
        write_text(run.final / "README.md", model_card(config, run.info()))
    if s.d.world > 1:
        dist.barrier()
    return TrainResult(run.path, run.final, results)


__all__ = ["TrainResult", "train"]
