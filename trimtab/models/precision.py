"""Which precision ``auto`` means on a device: bf16 where it is faster than fp32, else fp32.

``precision: auto`` (the train config, ``trimtab eval --precision``, ``trimtab serve
--precision``, the generation pool) asks :func:`fast_precision`:

- a CUDA device: bf16 where it supports bf16 (``torch.cuda.is_bf16_supported()``);
- a CPU: measured. Whether bf16 pays cannot be read off one CPU flag: with AMX a bf16 matmul runs
  ~10x faster than fp32, with AVX512-BF16 ~4x, and with AVX2 only it is emulated and ~100x
  *slower*. :func:`measure_cpu` times matmuls at transformer-like shapes in each dtype with the
  current torch thread count, and bf16 is chosen only when it is clearly faster
  (:data:`BF16_MIN_SPEEDUP`). The probe stays cheap where bf16 is slow: a small bf16 matmul is
  timed first (on one thread, torch's count restored after) and the rest skipped when it is
  already :data:`SCREEN_MAX_SLOWDOWN` times slower than fp32, and each dtype stops after
  :data:`BUDGET_S` seconds of matmuls. It takes ~0.1 s on an idle CPU, ~0.6 s on a busy one;
- any other device: fp32.

The measurement is cached as JSON in ``cache_dir()/precision/<key>.json`` (``$TRIMTAB_HOME``,
else ``~/.cache/trimtab``), keyed by the CPU model, its bf16-relevant flags, torch's version and
CPU capability, ``$ONEDNN_MAX_CPU_ISA`` and the thread count: another machine, torch or thread
count measures again, and a shared home keeps one file per machine. A cache file that is
unreadable or damaged is measured again and rewritten; a home that cannot be written only costs
the measurement next time.

Environment:

``TRIMTAB_PRECISION=bf16|fp32``
    forces what ``auto`` means, on every device, without measuring (tests, CI, or a user who
    knows better). Unset, empty or ``auto``: decide as above.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from trimtab.errors import TrimtabError
from trimtab.files import write_json

if TYPE_CHECKING:
    import torch

Precision = Literal["bf16", "fp32"]

ENV_VAR = "TRIMTAB_PRECISION"
BF16_MIN_SPEEDUP = 1.2
"""bf16 is chosen only at this many times fp32's speed: near a tie fp32 keeps its accuracy."""
SCREEN_MAX_SLOWDOWN = 5.0
"""A small bf16 matmul this many times slower than fp32 ends the bf16 probe (emulated bf16)."""
BUDGET_S = 0.3
"""Seconds of matmuls after which one dtype's probe stops with the best times it has."""

SHAPES = ((512, 576, 1536), (512, 384, 1536))
"""(m, k, n) of the timed matmuls: 512 tokens through an MLP projection of 576- and 384-wide
models (SmolLM2-135M, MiniLM/mpnet-sized)."""
SCREEN_SHAPE = (32, 384, 768)
"""A matmul small enough to cost ~10 ms where bf16 is emulated (~2 GFLOP/s)."""
WARMUPS, REPEATS = 2, 3

_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2", "bf16")  # bf16: ARM's "Features"

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrecisionProbe:
    """One measurement of this CPU's matmul speed in fp32 and bf16."""

    fp32_gflops: float
    bf16_gflops: float
    threads: int
    seconds: float
    """Wall time of the probe itself."""
    bf16_cut_short: bool = False
    """True when bf16 was timed on the small screening matmul only (it was far slower)."""

    @property
    def precision(self) -> Precision:
        """bf16 where it is clearly faster than fp32, else fp32."""
        return "bf16" if self.bf16_gflops >= BF16_MIN_SPEEDUP * self.fp32_gflops else "fp32"


@dataclass(frozen=True)
class PrecisionDecision:
    """What ``auto`` means on one device, and why."""

    precision: Precision
    reason: Literal["env", "cuda", "other-device", "measured", "cached"]
    probe: PrecisionProbe | None = None
    cache_file: Path | None = None

    def describe(self) -> str:
        """One line for a log: ``precision auto: bf16 (bf16 905 GFLOP/s vs fp32 212 on 2
        threads, cached ~/.cache/trimtab/precision/….json)``."""
        if self.probe is None:
            why = {
                "env": f"{ENV_VAR}={self.precision}",
                "cuda": f"the GPU {'supports' if self.precision == 'bf16' else 'lacks'} bf16",
            }.get(self.reason, "fp32 on devices other than CPU and CUDA")
            return f"precision auto: {self.precision} ({why})"
        p = self.probe
        figures = (
            f"bf16 {p.bf16_gflops:.0f} GFLOP/s vs fp32 {p.fp32_gflops:.0f} on {p.threads} "
            f"thread{'s' if p.threads != 1 else ''}"
        )
        if p.bf16_cut_short:
            figures += ", bf16 probe cut short"
        if self.reason == "cached":
            where = f"cached {self.cache_file}"
        else:
            where = f"measured in {p.seconds:.2f} s"
            if self.cache_file is not None:
                where += f", saved to {self.cache_file}"
        return f"precision auto: {self.precision} ({figures}, {where})"


def fast_precision(device: torch.device | str) -> Precision:
    """The faster of bf16 and fp32 on ``device``: what ``precision: auto`` means there."""
    return decide_precision(device).precision


def describe_precision(device: torch.device | str) -> str:
    """One line saying what ``auto`` means on ``device`` and why (for the run's log)."""
    return decide_precision(device).describe()


def decide_precision(device: torch.device | str) -> PrecisionDecision:
    """What ``auto`` means on ``device`` (see the module's docstring for the rules)."""
    import torch

    forced = _forced()
    if forced is not None:
        return PrecisionDecision(forced, "env")
    kind = torch.device(device).type
    if kind == "cuda":
        return PrecisionDecision("bf16" if torch.cuda.is_bf16_supported() else "fp32", "cuda")
    if kind != "cpu":
        return PrecisionDecision("fp32", "other-device")
    return _cpu_decision()


def measure_cpu() -> PrecisionProbe:
    """Time fp32 and bf16 matmuls on the CPU with torch's current thread count (uncached)."""
    import torch

    start = time.perf_counter()
    # Autocast would turn the fp32 matmuls into bf16 ones; a private generator leaves the
    # global random state (and so a seeded run) as if the probe had been read from the cache.
    with torch.autocast("cpu", enabled=False), torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        fp32 = _gflops(torch.float32, SHAPES, gen)
        fp32_small, bf16 = _screen(gen)
        cut_short = bf16 * SCREEN_MAX_SLOWDOWN < fp32_small
        if not cut_short:
            bf16 = _gflops(torch.bfloat16, SHAPES, gen)
    return PrecisionProbe(
        fp32_gflops=fp32,
        bf16_gflops=bf16,
        threads=torch.get_num_threads(),
        seconds=time.perf_counter() - start,
        bf16_cut_short=cut_short,
    )


def cache_key() -> dict[str, Any]:
    """What a CPU measurement depends on: a cached one is used only where all of it matches."""
    import torch

    model, flags = _cpu_identity()
    return {
        "cpu": model,
        "flags": list(flags),  # a list, as it reads back from JSON
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "threads": torch.get_num_threads(),
    }


def cache_file(key: dict[str, Any]) -> Path:
    """Where the measurement for ``key`` is cached: one file per key, so machines sharing a
    home never overwrite each other's."""
    from trimtab.models.registry import cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "precision" / f"cpu-{digest}.json"


def _cpu_decision() -> PrecisionDecision:
    key = cache_key()
    path = cache_file(key)
    cached = _read_cache(path, key)
    if cached is not None:
        return PrecisionDecision(cached.precision, "cached", cached, path)
    probe = measure_cpu()
    saved: Path | None = path
    try:
        write_json(path, {"key": key, "probe": asdict(probe), "precision": probe.precision})
    except OSError as exc:  # the cache only saves time: a read-only home must not stop work
        _log.warning("could not cache the precision probe in %s: %s", path, exc)
        saved = None
    return PrecisionDecision(probe.precision, "measured", probe, saved)


def _read_cache(path: Path, key: dict[str, Any]) -> PrecisionProbe | None:
    """The probe cached in ``path`` for ``key``; None (measure again) if absent or damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["key"] != key:  # a hash collision, or a file copied from elsewhere
            return None
        fields = data["probe"]
        probe = PrecisionProbe(
            fp32_gflops=float(fields["fp32_gflops"]),
            bf16_gflops=float(fields["bf16_gflops"]),
            threads=int(fields["threads"]),
            seconds=float(fields["seconds"]),
            bf16_cut_short=bool(fields.get("bf16_cut_short", False)),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _log.warning("measuring again: unreadable precision cache %s: %s", path, exc)
        return None
    if not (probe.fp32_gflops > 0 and probe.bf16_gflops > 0):  # also rejects NaN
        _log.warning("measuring again: precision cache %s holds no speeds", path)
        return None
    return probe


def _forced() -> Precision | None:
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("bf16", "fp32"):
        return "bf16" if value == "bf16" else "fp32"
    raise TrimtabError(f"{ENV_VAR}: bf16, fp32 or auto (got {value!r})")


def _gflops(
    dtype: torch.dtype,
    shapes: tuple[tuple[int, int, int], ...],
    gen: torch.Generator,
    warmups: int = WARMUPS,
    repeats: int = REPEATS,
) -> float:
    """GFLOP/s of ``dtype`` over ``shapes``: each shape's best call, after warm-ups (oneDNN
    builds its kernels on the first). Stops after :data:`BUDGET_S` seconds of matmuls; a shape
    cut short counts its best call so far, warm-up or not, and shapes not reached are left out."""
    import torch

    flops = seconds = spent = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=gen).to(dtype)
        b = torch.randn(k, n, generator=gen).to(dtype)
        warm: list[float] = []
        timed: list[float] = []
        for i in range(warmups + repeats):
            took = _timed_matmul(a, b)
            spent += took
            (warm if i < warmups else timed).append(took)
            if spent > BUDGET_S:
                break
        flops += 2.0 * m * k * n
        seconds += min(timed or warm)
        if spent > BUDGET_S:
            break
    return flops / max(seconds, 1e-9) / 1e9


def _screen(gen: torch.Generator) -> tuple[float, float]:
    """fp32 and bf16 GFLOP/s of the small :data:`SCREEN_SHAPE` matmul, on one thread: split
    over threads a matmul this small mostly measures how long the threads wait for each other
    (on a busy CPU, ~1 GFLOP/s in either dtype), which would hide an emulated bf16."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp32 = _gflops(torch.float32, (SCREEN_SHAPE,), gen, warmups=1, repeats=2)
        bf16 = _gflops(torch.bfloat16, (SCREEN_SHAPE,), gen, warmups=1, repeats=2)
    finally:
        torch.set_num_threads(threads)
    return fp32, bf16


def _timed_matmul(a: torch.Tensor, b: torch.Tensor) -> float:
    """Seconds one ``a @ b`` takes (CPU matmuls are synchronous); tests replace this."""
    start = time.perf_counter()
    a @ b
    return time.perf_counter() - start


@functools.cache
def _cpu_identity() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and which of the bf16-relevant flags it has (``/proc/cpuinfo``;
    elsewhere what :mod:`platform` says, and no flags)."""
    model, flags = "", set[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name in ("model name", "hardware", "cpu model") and not model:
                    model = value.strip()
                elif name in ("flags", "features"):
                    flags.update(value.split())
                elif not line.strip() and model and flags:
                    break  # the first CPU's block is enough: all cores are alike here
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    return model, tuple(flag for flag in _FLAGS if flag in flags)
