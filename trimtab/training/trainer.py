"""``trimtab train``: load, make trainable, train, evaluate, checkpoint, export.

:func:`train` is the whole recipe: the CLI only builds a :class:`TrainConfig` and calls it.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trimtab.errors import ConfigError, TrimtabError
from trimtab.files import staged_dir
from trimtab.methods import (
    FrozenTrunk,
    MethodSpec,
    apply_method,
    save_trainable,
    trainable_parameters,
)
from trimtab.models import resolve_model
from trimtab.models.loading import load_model
from trimtab.training import batches as b
from trimtab.training import checkpoint as ckpt
from trimtab.training.config import TrainConfig, load_config, resolve_auto
from trimtab.training.loop import (
    Dist,
    Objective,
    Progress,
    TrainingDiverged,
    all_reduce,
    autocast,
    bf16_available,
    chunks,
    device_for,
    init_distributed,
    l1_penalty,
    loss_units,
    make_optimizer,
    make_scheduler,
    seed_everything,
    steady_malloc,
    to_device,
)
from trimtab.training.run import RunFolder, default_run_dir, model_card, write_json_atomically


@dataclass
class TrainResult:
    """Where the run is and how it went."""

    run_dir: Path
    final: Path
    results: dict[str, Any]


@dataclass
class Data:
    """Encoded examples of both splits and what the task needs to know."""

    train: list[Any]
    valid: list[Any]
    labels: list[str] | None
    pad_id: int


def train(
    config: TrainConfig | None,
    *,
    resume: Path | None = None,
    progress: bool = True,
    log: Any = None,
) -> TrainResult:
    """Train per ``config`` (or continue the run folder ``resume`` from its last checkpoint)."""
    d = init_distributed()
    device = device_for(d)
    steady_malloc()
    if resume is not None:
        run = RunFolder(Path(resume))
        if not run.config_file.is_file():
            raise TrimtabError(f"{resume}: not a trimtab run folder (no config.yaml) to resume")
        config = load_config(run.config_file)
    else:
        run = RunFolder(config.run_dir or default_run_dir(config))
        if run.info_file.exists():
            raise TrimtabError(
                f"{run.path}: a run already exists there; resume it with "
                f"--resume {run.path} or choose another run_dir"
            )
    seed_everything(config.seed)

    resolve_model(config.model.name)  # an unknown model fails before any data is read
    classify = config.data.task == "classify"
    records = _read(config)
    labels = b.label_names(records["train"]) if classify else None
    loaded = load_model(config.model.name, "classify" if classify else "causal-lm", labels=labels)
    data = _encode(config, records, loaded.tokenizer, labels)
    if resume is None:
        config = resolve_auto(config, len(data.train))
        config = config.model_copy(update={"run_dir": run.path})
    loaded.model.set_attn_implementation(_attention(config, device, data))
    spec = MethodSpec(
        config.method.name,
        config.method.trainable_layers,
        config.method.lora_r,
        config.method.lora_alpha,
        config.method.lora_dropout,
        config.method.target_modules,
    )
    model = apply_method(loaded.model, spec, "classify" if classify else "causal-lm").to(device)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and bf16_available(device))
    if bf16 and config.method.name == "lora":
        _frozen_linears_to_bf16(model)

    trunk = None
    if config.method.name == "freeze" and FrozenTrunk.supported(model):
        trunk = FrozenTrunk(
            model, config.method.trainable_layers, "classify" if classify else "causal-lm"
        )
        started = time.perf_counter()
        for split in (data.train, data.valid):
            _cache_features(trunk, split, data.pad_id, device, bf16)
        if progress and d.main:
            _say(
                log,
                f"cached frozen-trunk features of {len(data.train) + len(data.valid)} "
                f"examples in {time.perf_counter() - started:.1f} s",
            )

    # Default micro-batch: the batch split over the processes, at most 16 sequences at once.
    micro = config.micro_batch_size or max(1, min(int(config.batch_size) // d.world, 16))
    per_step = micro * d.world
    if int(config.batch_size) % per_step:
        raise ConfigError(
            [
                f"batch_size {config.batch_size} must be a multiple of "
                f"micro_batch_size {micro} x {d.world} processes"
            ]
        )
    accum = int(config.batch_size) // per_step
    sampler = b.LengthGroupedSampler(
        [len(e.input_ids) for e in data.train], micro, config.seed, rank=d.rank, world_size=d.world
    )
    steps_per_epoch = len(sampler) // accum
    if steps_per_epoch == 0:
        raise ConfigError(
            [
                f"batch_size {config.batch_size} is larger than the "
                f"{len(data.train)} training examples"
            ]
        )
    total = int(config.epochs) * steps_per_epoch
    if config.max_steps:
        total = min(total, config.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config.optim, float(config.optim.lr))
    warmup = config.optim.warmup
    warmup_steps = round(warmup * total) if warmup < 1 else int(warmup)
    scheduler = make_scheduler(optimizer, config.optim.schedule, warmup_steps, total)
    objective = Objective(model, causal=not classify, trunk=trunk)
    runner: torch.nn.Module = objective
    if d.world > 1:
        runner = torch.nn.parallel.DistributedDataParallel(objective)

    state = ckpt.LoopState()
    if resume is not None:
        latest = ckpt.latest_checkpoint(run.path)
        ckpt.remove_partial(run.path)
        if latest is not None:
            state = ckpt.load_checkpoint(latest, model, optimizer, scheduler)
            if d.main:
                run.truncate_metrics(state.metrics_lines)
                _say(log, f"resumed {run.path} from {latest.name}")
    trainable, everything = trainable_parameters(model)
    if d.main:
        run.start(
            config,
            {
                "name": run.path.name,
                "base_model": config.model.name,
                "task": config.data.task,
                "method": config.method.name,
                "labels": labels,
                "train_examples": len(data.train),
                "valid_examples": len(data.valid),
                "trainable_parameters": trainable,
                "total_parameters": everything,
                "world_size": d.world,
                "bf16": bf16,
                "device": str(device),
                "feature_cache": trunk is not None,
            },
        )
        if progress:
            _say(
                log,
                f"{config.model.name} {config.method.name} ({trainable:,} of "
                f"{everything:,} parameters train), {len(data.train):,} examples, "
                f"{config.epochs} epochs x {steps_per_epoch} steps, batch "
                f"{config.batch_size} = {micro} x {accum} x {d.world}, lr "
                f"{config.optim.lr:g}, {'bf16' if bf16 else 'fp32'}; run {run.path}",
            )

    def collate_with(indices: list[int]) -> dict[str, torch.Tensor]:
        items = [data.train[i] for i in indices]
        batch = b.collate(items, data.pad_id)
        if trunk is not None:
            batch["features"] = _pad_features([e.features for e in items])
        return to_device(batch, device)

    bar = Progress(total, state.step, progress and d.main, config.log_every, write=log)
    window_start, window_tokens = time.perf_counter(), 0
    run_start = time.perf_counter() - state.elapsed
    stop = False
    step_loss = float("nan")
    try:
        while state.step < total and not stop:
            batches = sampler.batches(state.epoch)
            usable = len(batches) // accum * accum
            while state.batch_in_epoch < usable and state.step < total:
                group = batches[state.batch_in_epoch : state.batch_in_epoch + accum]
                micro_batches = [collate_with(idx) for idx in group]
                units = all_reduce(
                    [sum(loss_units(mb, not classify) for mb in micro_batches)], d, device
                )[0]
                loss_sum = correct = count = tokens = 0.0
                for i, batch in enumerate(micro_batches):
                    sync = (
                        runner.no_sync()
                        if d.world > 1 and i < len(micro_batches) - 1
                        else contextlib.nullcontext()
                    )
                    with sync, autocast(device, bf16):
                        part, hits, n = runner(batch)
                        loss = part * (d.world / max(units, 1.0))
                        if config.optim.l1:
                            loss = loss + config.optim.l1 * l1_penalty(params) / len(micro_batches)
                    loss.backward()
                    loss_sum += part.item()
                    correct += float(hits)
                    count += float(n)
                    tokens += float(batch["attention_mask"].sum())
                loss_sum, correct, count, tokens = all_reduce(
                    [loss_sum, correct, count, tokens], d, device
                )
                step_loss = loss_sum / max(count, 1.0)
                grad_norm = _clip(params, config.optim.max_grad_norm)
                if (
                    not math.isfinite(step_loss)
                    or step_loss > config.max_loss
                    or not math.isfinite(grad_norm)
                ):
                    raise TrainingDiverged(_diverged(run, state.step + 1, step_loss))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.batch_in_epoch += accum
                state.tokens += int(tokens)
                window_tokens += tokens
                now = time.perf_counter()
                speed = window_tokens / max(now - window_start, 1e-9)
                lr = scheduler.get_last_lr()[0]
                bar.update(state.step, step_loss, speed, lr)
                epoch_end = state.batch_in_epoch >= usable
                if d.main and (state.step % config.log_every == 0 or state.step == total):
                    run.log(
                        {
                            "step": state.step,
                            "epoch": state.epoch + state.batch_in_epoch / max(usable, 1),
                            "train_loss": round(step_loss, 6),
                            "train_token_accuracy": round(correct / max(count, 1), 6),
                            "lr": lr,
                            "tokens_per_second": round(speed, 1),
                            "grad_norm": round(grad_norm, 6),
                        }
                    )
                    state.metrics_lines += 1
                    window_start, window_tokens = time.perf_counter(), 0
                due_eval = (
                    state.step % config.eval_every == 0 if config.eval_every else epoch_end
                ) or state.step == total
                if due_eval:
                    stop = _evaluate_and_save(
                        config,
                        run,
                        d,
                        device,
                        bf16,
                        objective,
                        data,
                        state,
                        model,
                        optimizer,
                        scheduler,
                        bar,
                        run_start,
                        loaded.tokenizer,
                        labels,
                    )
                    if stop:
                        break
                elif config.save_every and state.step % config.save_every == 0 and d.main:
                    state.elapsed = time.perf_counter() - run_start
                    ckpt.save_checkpoint(
                        run.checkpoint(state.step), model, optimizer, scheduler, state
                    )
                    ckpt.prune(run.path, config.keep_checkpoints, set())
            if state.batch_in_epoch >= usable:
                state.epoch += 1
                state.batch_in_epoch = 0
    finally:
        bar.close()
    elapsed = time.perf_counter() - run_start
    results = {
        "steps": state.step,
        "epochs": round(state.epoch + state.batch_in_epoch / max(1, len(sampler)), 3),
        "train_seconds": round(elapsed, 1),
        "tokens": state.tokens,
        "tokens_per_second": round(state.tokens / max(elapsed, 1e-9), 1),
        "train_loss": round(step_loss, 6) if state.step else None,
        "best_step": state.best_step,
    }
    last_valid = [m for m in run.metrics() if "valid_loss" in m] if d.main else []
    if last_valid:
        best = min(last_valid, key=lambda m: m["valid_loss"])
        results.update(valid_loss=best["valid_loss"], valid_accuracy=best.get("valid_accuracy"))
    if d.main:
        best_dir = run.best if (config.keep_best and state.best_step is not None) else None
        if best_dir is not None and best_dir.is_dir():
            _copy_atomically(best_dir, run.final)
        else:
            _export(run.final, model, loaded.tokenizer, config, run, labels)
        run.update(status="completed", results=results)
        (run.final / "README.md").write_text(model_card(config, run.info()), encoding="utf-8")
    if d.world > 1:
        dist.barrier()
    return TrainResult(run.path, run.final, results)


# --- helpers of train() ----------------------------------------------------------------------


def _say(log: Any, text: str) -> None:
    (log or (lambda s: print(s, flush=True)))(text)


def _read(config: TrainConfig) -> dict[str, list[Any]]:
    out = {"train": b.read_examples(config.data.train)}
    out["valid"] = b.read_examples(config.data.valid) if config.data.valid else []
    return out


def _encode(
    config: TrainConfig, records: dict[str, list[Any]], tokenizer: Any, labels: list[str] | None
) -> Data:
    length = config.model.max_length
    out: dict[str, list[Any]] = {}
    for split, items in records.items():
        if not items:
            out[split] = []
        elif config.data.task == "classify":
            out[split] = b.encode_classify(items, tokenizer, length, labels or [])
        elif config.data.task == "lm":
            out[split] = b.encode_lm(items, tokenizer, length, pack=config.data.pack)
        else:
            out[split] = b.encode_sft(
                items,
                tokenizer,
                length,
                config.data.prompt_loss_weight,
                add_eos=_add_eos(config, records["train"]),
            )
    return Data(out["train"], out["valid"], labels, tokenizer.pad_token_id)


EAGER_MAX_TOKENS = 256


def _attention(config: TrainConfig, device: torch.device, data: Data) -> str:
    """On CPU, eager attention measured 15-30% faster per step than SDPA's flash kernel
    (SmolLM2, 48-160 tokens, bf16 autocast), but it keeps a T x T matrix per layer for the
    backward pass: 4 GB more at 500 tokens. So eager only while every sequence is short."""
    if config.model.attention != "auto":
        return config.model.attention
    longest = max((len(e.input_ids) for e in data.train + data.valid), default=0)
    return "eager" if device.type == "cpu" and longest <= EAGER_MAX_TOKENS else "sdpa"


def _frozen_linears_to_bf16(model: torch.nn.Module) -> None:
    """LoRA never changes the base weights, and autocast would cast each frozen linear weight
    to bf16 on every forward: cast them once. Trainable weights stay fp32 (master weights);
    embeddings (and a head tied to them) stay fp32 so the residual stream keeps its precision.
    The saved adapter is unaffected; the base model is reloaded in fp32 wherever it is used."""
    embedding = model.get_input_embeddings().weight
    with torch.no_grad():
        for module in model.modules():
            if (
                isinstance(module, torch.nn.Linear)
                and not module.weight.requires_grad
                and module.weight is not embedding
            ):
                module.weight.data = module.weight.data.to(torch.bfloat16)
                if module.bias is not None and not module.bias.requires_grad:
                    module.bias.data = module.bias.data.to(torch.bfloat16)


def _add_eos(config: TrainConfig, train: list[Any]) -> bool:
    if config.data.add_eos != "auto":
        return bool(config.data.add_eos)
    try:
        distinct = len(b.label_names(train))
    except TrimtabError:  # not prompt/completion or chat: nothing to classify
        return True
    return not (distinct <= 50 and distinct * 3 <= len(train))


def _cache_features(
    trunk: Any, items: list[Any], pad_id: int, device: torch.device, bf16: bool
) -> None:
    """Run the frozen trunk once over every example; keep each example's features."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    with torch.no_grad():
        for idx in chunks(order, 64):
            batch = to_device(b.collate([items[i] for i in idx], pad_id), device)
            with autocast(device, bf16):
                feats = trunk.features(batch["input_ids"], batch["attention_mask"])
            feats = feats.to(torch.bfloat16 if bf16 else torch.float32)  # half the memory
            for row, i in enumerate(idx):
                n = len(items[i].input_ids)
                items[i].features = feats[row, :n].cpu() if feats.dim() == 3 else feats[row].cpu()


def _pad_features(features: list[torch.Tensor]) -> torch.Tensor:
    if features[0].dim() == 1:
        return torch.stack(features)
    return torch.nn.utils.rnn.pad_sequence(features, batch_first=True)


def _clip(params: list[torch.nn.Parameter], max_norm: float | None) -> float:
    if max_norm is None:
        grads = [p.grad.detach().norm() for p in params if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


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


def evaluate(
    objective: Objective,
    items: list[Any],
    pad_id: int,
    device: torch.device,
    bf16: bool,
    batch_size: int = 32,
) -> dict[str, float]:
    """Mean loss and accuracy (token accuracy for causal tasks) over ``items``."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    loss = correct = count = 0.0
    was_training = objective.training
    objective.eval()
    with torch.no_grad():
        for idx in chunks(order, batch_size):
            group = [items[i] for i in idx]
            batch = b.collate(group, pad_id)
            if objective.trunk is not None:
                batch["features"] = _pad_features([e.features for e in group])
            with autocast(device, bf16):
                part, hits, n = objective(to_device(batch, device))
            loss += float(part)
            correct += float(hits)
            count += float(n)
    objective.train(was_training)
    return {"valid_loss": loss / max(count, 1.0), "valid_accuracy": correct / max(count, 1.0)}


def _evaluate_and_save(
    config: TrainConfig,
    run: RunFolder,
    d: Dist,
    device: torch.device,
    bf16: bool,
    objective: Objective,
    data: Data,
    state: ckpt.LoopState,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    bar: Progress,
    run_start: float,
    tokenizer: Any,
    labels: list[str] | None,
) -> bool:
    """Evaluate (rank 0), keep the best, checkpoint; True when early stopping says stop."""
    stop = 0.0
    if d.main:
        if data.valid:
            scores = evaluate(objective, data.valid, data.pad_id, device, bf16)
            run.log(
                {
                    "step": state.step,
                    "epoch": state.epoch,
                    **{k: round(v, 6) for k, v in scores.items()},
                }
            )
            state.metrics_lines += 1
            bar.message(
                f"step {state.step}: valid loss {scores['valid_loss']:.4f}, "
                f"accuracy {scores['valid_accuracy']:.4f}"
            )
            if state.best_score is None or scores["valid_loss"] < state.best_score:
                state.best_score, state.best_step, state.bad_evals = (
                    scores["valid_loss"],
                    state.step,
                    0,
                )
                if config.keep_best:
                    _export(run.best, model, tokenizer, config, run, labels)
            else:
                state.bad_evals += 1
                if (
                    config.early_stopping_patience
                    and state.bad_evals >= config.early_stopping_patience
                ):
                    bar.message(
                        f"early stopping: no improvement in {state.bad_evals} "
                        f"evaluations; best step {state.best_step}"
                    )
                    stop = 1.0
        state.elapsed = time.perf_counter() - run_start
        ckpt.save_checkpoint(run.checkpoint(state.step), model, optimizer, scheduler, state)
        ckpt.prune(run.path, config.keep_checkpoints, set())
    if d.world > 1:
        stop = all_reduce([stop], d, device)[0]
    return stop > 0


def _export(
    folder: Path,
    model: torch.nn.Module,
    tokenizer: Any,
    config: TrainConfig,
    run: RunFolder,
    labels: list[str] | None,
) -> None:
    """Write a complete model folder: weights, tokenizer, trimtab.json (all or nothing)."""
    with staged_dir(folder) as tmp:
        save_trainable(model, tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomically(
            tmp / "trimtab.json",
            {
                "base_model": config.model.name,
                "task": config.data.task,
                "method": config.method.name,
                "labels": labels,
                "max_length": config.model.max_length,
                "run": str(run.path),
            },
        )


def _copy_atomically(source: Path, folder: Path) -> None:
    with staged_dir(folder) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
