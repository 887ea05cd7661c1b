"""precision auto: bf16 only where a measured matmul says it is faster, measured once per machine.

The matmul timer is replaced by a fake CPU with chosen speeds, so these tests decide quickly and
the same way on any machine; one test runs the real probe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from trimtab.errors import TrimtabError
from trimtab.models import precision
from trimtab.models.batching import bf16_available

CPU = torch.device("cpu")
AVX512_BF16 = ("AMD EPYC", ("avx512_bf16", "avx512f", "avx2"))


@dataclass
class FakeCPU:
    """Matmul timings of a CPU doing ``gflops[dtype]`` (GFLOP/s), or ``seconds`` per call."""

    fp32: float = 200.0
    bf16: float = 900.0
    bf16_seconds: float | None = None  # every bf16 call but the screening one takes this long
    calls: list[tuple[torch.dtype, tuple[int, int, int]]] = field(default_factory=list)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> float:
        shape = (a.shape[0], a.shape[1], b.shape[1])
        self.calls.append((a.dtype, shape))
        if a.dtype == torch.bfloat16 and self.bf16_seconds is not None:
            if shape != precision.SCREEN_SHAPE:
                return self.bf16_seconds
        rate = self.bf16 if a.dtype == torch.bfloat16 else self.fp32
        return 2.0 * shape[0] * shape[1] * shape[2] / (rate * 1e9)

    def bf16_calls(self) -> list[tuple[int, int, int]]:
        return [shape for dtype, shape in self.calls if dtype == torch.bfloat16]


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeCPU:
    """A fake AVX512-BF16 CPU (bf16 4.5x fp32), its cache in this test's own home."""
    fake = FakeCPU()
    monkeypatch.setenv("TRIMTAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(precision.ENV_VAR, raising=False)
    monkeypatch.setattr(precision, "_timed_matmul", fake)
    monkeypatch.setattr(precision, "_cpu_identity", lambda: AVX512_BF16)
    return fake


def test_a_cpu_where_bf16_is_faster_picks_bf16_and_measures_once(cpu: FakeCPU) -> None:
    first = precision.decide_precision(CPU)
    timed = len(cpu.calls)
    second = precision.decide_precision(CPU)

    assert (first.precision, first.reason) == ("bf16", "measured")
    assert timed > 0
    assert (second.precision, second.reason) == ("bf16", "cached")
    assert len(cpu.calls) == timed  # the cached result was used without timing again
    assert second.probe == first.probe
    assert first.cache_file == second.cache_file
    assert second.cache_file is not None and second.cache_file.is_file()


def test_the_cache_lives_in_trimtabs_home(cpu: FakeCPU, tmp_path: Path) -> None:
    decision = precision.decide_precision(CPU)

    assert decision.cache_file is not None
    assert decision.cache_file.parent == tmp_path / "home" / "precision"
    saved = json.loads(decision.cache_file.read_text())
    assert saved["key"] == precision.cache_key()
    assert saved["probe"]["bf16_gflops"] == pytest.approx(900.0)
    assert saved["probe"]["fp32_gflops"] == pytest.approx(200.0)


def test_another_thread_count_measures_again(cpu: FakeCPU) -> None:
    threads = torch.get_num_threads()
    other = 1 if threads != 1 else 2
    precision.decide_precision(CPU)
    timed = len(cpu.calls)
    torch.set_num_threads(other)
    try:
        again = precision.decide_precision(CPU)
        cached = precision.decide_precision(CPU)
    finally:
        torch.set_num_threads(threads)

    assert again.reason == "measured"
    assert len(cpu.calls) > timed
    assert again.probe is not None and again.probe.threads == other
    assert cached.reason == "cached"  # each key keeps its own file
    assert precision.decide_precision(CPU).reason == "cached"


@pytest.mark.parametrize(
    "identity",
    [
        ("AMD EPYC", ("avx512f", "avx2")),  # same model name, other flags
        ("Intel(R) Xeon(R) Platinum 8480+", AVX512_BF16[1]),  # another CPU
    ],
)
def test_another_cpu_measures_again(
    cpu: FakeCPU, monkeypatch: pytest.MonkeyPatch, identity: tuple[str, tuple[str, ...]]
) -> None:
    first = precision.decide_precision(CPU)
    timed = len(cpu.calls)
    monkeypatch.setattr(precision, "_cpu_identity", lambda: identity)
    again = precision.decide_precision(CPU)

    assert again.reason == "measured"
    assert len(cpu.calls) > timed
    assert again.cache_file != first.cache_file


def test_another_torch_version_measures_again(
    cpu: FakeCPU, monkeypatch: pytest.MonkeyPatch
) -> None:
    precision.decide_precision(CPU)
    monkeypatch.setattr(torch, "__version__", "9.9.9")

    assert precision.decide_precision(CPU).reason == "measured"


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[]",
        '{"key": 1}',
        "KEY",  # the right key, no probe
        "KEY_PROBE",  # the right key, a probe without speeds
        b"\xff\xfe\x00garbage",
    ],
)
def test_a_damaged_cache_file_is_measured_again_and_rewritten(
    cpu: FakeCPU, content: str | bytes
) -> None:
    path = precision.cache_file(precision.cache_key())
    path.parent.mkdir(parents=True)
    if content == "KEY":
        content = json.dumps({"key": precision.cache_key()})
    elif content == "KEY_PROBE":
        probe = {"fp32_gflops": 0, "bf16_gflops": "nan", "threads": 2, "seconds": 0.1}
        content = json.dumps({"key": precision.cache_key(), "probe": probe})
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)

    decision = precision.decide_precision(CPU)
    timed = len(cpu.calls)

    assert (decision.precision, decision.reason) == ("bf16", "measured")
    assert json.loads(path.read_text())["key"] == precision.cache_key()
    assert precision.decide_precision(CPU).reason == "cached"
    assert len(cpu.calls) == timed


def test_a_cache_that_cannot_be_read_or_written_still_decides(cpu: FakeCPU) -> None:
    path = precision.cache_file(precision.cache_key())
    path.mkdir(parents=True)  # a folder where the file should be: reading and writing fail

    decision = precision.decide_precision(CPU)

    assert (decision.precision, decision.reason) == ("bf16", "measured")
    assert decision.cache_file is None
    assert "measured in" in decision.describe()


@pytest.mark.parametrize("forced", ["fp32", "bf16", " BF16 "])
def test_the_environment_variable_wins_without_measuring(
    cpu: FakeCPU, monkeypatch: pytest.MonkeyPatch, forced: str
) -> None:
    cpu.bf16 = 1.0  # measuring would pick fp32
    monkeypatch.setenv(precision.ENV_VAR, forced)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    want = forced.strip().lower()

    assert precision.fast_precision(CPU) == want
    assert precision.fast_precision(torch.device("cuda")) == want
    assert precision.fast_precision("cpu") == want
    assert cpu.calls == []
    assert precision.describe_precision(CPU) == f"precision auto: {want} (TRIMTAB_PRECISION={want})"


def test_an_environment_variable_of_auto_measures(
    cpu: FakeCPU, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(precision.ENV_VAR, "auto")

    assert precision.decide_precision(CPU).reason == "measured"


def test_an_unknown_environment_value_is_an_error(
    cpu: FakeCPU, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(precision.ENV_VAR, "fp16")

    with pytest.raises(TrimtabError, match="TRIMTAB_PRECISION"):
        precision.fast_precision(CPU)


def test_an_avx2_cpu_where_bf16_is_emulated_picks_fp32_after_one_small_bf16_matmul(
    cpu: FakeCPU,
) -> None:
    cpu.bf16 = 1.0  # ~200x slower than fp32, as AVX2 runs bf16

    decision = precision.decide_precision(CPU)

    assert decision.precision == "fp32"
    assert decision.probe is not None and decision.probe.bf16_cut_short
    assert set(cpu.bf16_calls()) == {precision.SCREEN_SHAPE}  # no transformer-sized bf16 call
    assert "bf16 probe cut short" in decision.describe()


def test_the_bf16_probe_stops_at_its_time_budget(cpu: FakeCPU) -> None:
    cpu.bf16_seconds = 0.07  # passes the screen, then every matmul is slow

    probe = precision.measure_cpu()

    slow = [shape for shape in cpu.bf16_calls() if shape != precision.SCREEN_SHAPE]
    spent = 0.07 * len(slow)
    assert precision.BUDGET_S < spent <= precision.BUDGET_S + 0.07
    assert len(slow) < len(precision.SHAPES) * (precision.WARMUPS + precision.REPEATS)
    assert probe.bf16_gflops > 0


def test_one_very_slow_bf16_matmul_ends_the_probe(cpu: FakeCPU) -> None:
    cpu.bf16_seconds = 5.0

    probe = precision.measure_cpu()

    assert len([s for s in cpu.bf16_calls() if s != precision.SCREEN_SHAPE]) == 1
    assert probe.precision == "fp32"


@pytest.mark.parametrize(("bf16", "want"), [(210.0, "fp32"), (230.0, "fp32"), (250.0, "bf16")])
def test_bf16_is_picked_only_when_clearly_faster(cpu: FakeCPU, bf16: float, want: str) -> None:
    cpu.bf16 = bf16  # fp32: 200 GFLOP/s; bf16 needs 1.2x that

    assert precision.fast_precision(CPU) == want


def test_the_probe_leaves_the_random_state_and_thread_count_alone(cpu: FakeCPU) -> None:
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()

    precision.measure_cpu()

    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("supported", [True, False])
def test_a_cuda_device_asks_cuda_and_measures_nothing(
    cpu: FakeCPU, monkeypatch: pytest.MonkeyPatch, supported: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)

    decision = precision.decide_precision(torch.device("cuda", 0))

    assert decision.precision == ("bf16" if supported else "fp32")
    assert decision.reason == "cuda"
    assert bf16_available(torch.device("cuda")) is supported
    assert cpu.calls == []


def test_other_devices_run_fp32(cpu: FakeCPU) -> None:
    assert precision.fast_precision(torch.device("mps")) == "fp32"
    assert cpu.calls == []


def test_bf16_available_follows_the_measurement(cpu: FakeCPU) -> None:
    assert bf16_available(CPU) is True


def test_bf16_available_is_false_where_bf16_is_slow(cpu: FakeCPU) -> None:
    cpu.bf16 = 1.0

    assert bf16_available(CPU) is False


def test_the_description_gives_the_figures_and_where_they_come_from(cpu: FakeCPU) -> None:
    measured = precision.describe_precision(CPU)
    cached = precision.decide_precision(CPU)

    assert measured.startswith("precision auto: bf16 (bf16 900 GFLOP/s vs fp32 200 on ")
    assert "measured in" in measured and "saved to" in measured
    assert cached.describe().endswith(f", cached {cached.cache_file})")


def test_the_real_probe_measures_both_dtypes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRIMTAB_HOME", str(tmp_path))
    monkeypatch.delenv(precision.ENV_VAR, raising=False)

    decision = precision.decide_precision(CPU)

    assert decision.probe is not None
    assert decision.probe.fp32_gflops > 0 and decision.probe.bf16_gflops > 0
    assert decision.probe.threads == torch.get_num_threads()
    assert decision.precision == decision.probe.precision
    assert precision.decide_precision(CPU).reason == "cached"
