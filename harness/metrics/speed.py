"""Sampling speed and GPU telemetry (docs/models.md §5.5).

:func:`time_sampling` runs a sampling call ``warmup`` times untimed, then ``repeats``
times timed, with the device synchronised before and after each timed call
(``torch.cuda.synchronize``: CUDA launches are asynchronous, so an unsynchronised clock
measures launch time, not work).  It reports the median and every repeat.

GPU telemetry over the timed repeats (all ``None`` with a ``telemetry_reason`` when not
available — no CUDA device, no NVML library, or a GPU/MIG slice that does not expose a
counter):
- ``peak_memory_bytes``: ``torch.cuda.max_memory_allocated`` (tensors allocated by torch;
  the caching allocator's reserve and the CUDA context are not included);
- ``energy_joules``: the delta of ``nvmlDeviceGetTotalEnergyConsumption`` (mJ counter of
  the whole GPU: other processes on the same GPU are counted too);
- ``mean_power_watts``: energy / timed seconds.
NVML ignores CUDA_VISIBLE_DEVICES, so the torch device is mapped to its NVML handle by UUID.

The work counters (NFE, tokens computed) are exact and hardware-independent: gate CI on
those and treat wall-clock as advisory on shared machines.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch

from harness.metrics.machine import SharedMachine

NO_CUDA = "not available: no CUDA device"
NO_PYNVML = "not available: install nvidia-ml-py (import pynvml)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def threads_text(n: int) -> str:
    """'1 thread', '2 threads': how reports and command output name a thread count."""
    return f"{n} thread{'' if n == 1 else 's'}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or device.type


def torch_device_uuid(device: torch.device) -> str:
    """NVML-style UUID ("GPU-…" / "MIG-…") of a CUDA torch device."""
    raw = str(torch.cuda.get_device_properties(device).uuid)
    return raw if raw.startswith(("GPU-", "MIG-")) else f"GPU-{raw}"


def open_nvml(uuid: str):
    """(pynvml module, handle, None) or (None, None, reason).  Catches every NVMLError."""
    try:
        import pynvml
    except ImportError:
        return None, None, NO_PYNVML
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        return None, None, f"not available: NVML init failed ({err})"
    try:
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
    except pynvml.NVMLError as err:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
        return None, None, f"not available: no NVML device with UUID {uuid} ({err})"
    return pynvml, handle, None


class GpuTelemetry:
    """Energy/power/peak memory of one torch device between :meth:`start` and :meth:`stop`."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.reason: str | None = None
        self._nvml = self._handle = None
        self._energy0 = None
        self._t0 = None
        if self.device.type != "cuda" or not torch.cuda.is_available():
            self.reason = NO_CUDA
            return
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._nvml, self._handle, self.reason = open_nvml(torch_device_uuid(self.device))

    def _energy_mj(self):
        if self._handle is None:
            return None
        try:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except self._nvml.NVMLError as err:
            self.reason = f"not available: energy counter unsupported ({err})"
            return None

    def start(self) -> None:
        if self.device.type == "cuda" and torch.cuda.is_available():
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._energy0 = self._energy_mj()
        self._t0 = time.perf_counter()

    def stop(self, seconds: float | None = None) -> dict:
        """Telemetry since :meth:`start`; ``seconds`` (the timed total) defaults to wall time since start."""
        out = {"peak_memory_bytes": None, "energy_joules": None, "mean_power_watts": None}
        if self.device.type == "cuda" and torch.cuda.is_available():
            synchronize(self.device)
            out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
        elapsed = seconds if seconds is not None else time.perf_counter() - self._t0
        energy1 = self._energy_mj()
        if self._energy0 is not None and energy1 is not None:
            joules = (energy1 - self._energy0) / 1000.0
            out["energy_joules"] = joules
            out["mean_power_watts"] = joules / elapsed if elapsed > 0 else None
        out["telemetry_reason"] = self.reason
        return out

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._nvml = self._handle = None


def call_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` device-synchronised calls of ``fn`` after ``warmup``
    untimed ones (no telemetry: the light timer of benchmarks and ceiling measurements)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """The typical call: median of :func:`call_seconds`."""
    return statistics.median(call_seconds(fn, device, repeats, warmup))


def time_sampling(fn: Callable[[], object], warmup: int = 1, repeats: int = 3, *,
                  device: torch.device | str | None = None, batch_size: int | None = None,
                  length: int | None = None, dtype: torch.dtype | str | None = None,
                  clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time ``fn()`` (one batch of samples).

    If ``fn`` returns a :class:`harness.models.Generation`, ``batch_size`` and ``length``
    default to its tokens' shape and its ``nfe``/``tokens_computed`` are recorded.
    ``seconds_per_sample`` = median / batch_size; ``tokens_per_second`` = batch_size ·
    length / median (sequence positions produced per second, BOS included).
    ``energy_joules`` covers all timed repeats; ``energy_per_sample_joules`` divides it by
    repeats · batch_size.  ``load_average_1min``, ``cpu_seconds``, ``other_cores`` and
    ``machine_busy`` say whether other work shared the machine (harness.metrics.machine).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    for _ in range(warmup):
        fn()
    synchronize(device)
    telemetry = GpuTelemetry(device)
    times: list[float] = []
    result = None
    shared = SharedMachine(torch.get_num_threads() if device.type == "cpu" else 1)
    try:
        telemetry.start()
        with shared:
            for _ in range(repeats):
                synchronize(device)
                t0 = clock()
                result = fn()
                synchronize(device)
                times.append(clock() - t0)
        gpu = telemetry.stop(seconds=sum(times))
    finally:
        telemetry.close()
    tokens = getattr(result, "tokens", None)
    if isinstance(tokens, torch.Tensor) and tokens.dim() == 2:
        batch_size = batch_size if batch_size is not None else int(tokens.shape[0])
        length = length if length is not None else int(tokens.shape[1])
    median = statistics.median(times)
    out = {
        "seconds_median": median,
        "seconds_all": times,
        "warmup": warmup,
        "repeats": repeats,
        "batch_size": batch_size,
        "length": length,
        "seconds_per_sample": median / batch_size if batch_size and median > 0 else None,
        "tokens_per_second": batch_size * length / median if batch_size and length and median > 0 else None,
        "nfe": getattr(result, "nfe", None),
        "tokens_computed": getattr(result, "tokens_computed", None),
        "device": str(device),
        "device_name": device_name(device),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        **gpu,
        **shared.reading,
    }
    energy = out["energy_joules"]
    out["energy_per_sample_joules"] = energy / (repeats * batch_size) if energy is not None and batch_size else None
    return out
