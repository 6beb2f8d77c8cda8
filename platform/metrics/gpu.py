"""GPU gauges from NVML (``pynvml`` from the ``nvidia-ml-py`` package): ``GpuCollector``.

Registered on workers only (``enable_gpu_metrics``). Without the library or a driver it exports
``latentops_gpu_nvml_available 0`` and nothing else.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from latentops.platform.metrics.counters import METRIC_ERRORS

log = logging.getLogger(__name__)


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class GpuCollector(Collector):
    """Utilisation and memory of the GPUs this process may use, read through NVML at scrape time.

    Only the devices named in ``CUDA_VISIBLE_DEVICES`` (a worker child is pinned to one) are
    reported, by their physical index. No library, no driver or no GPU: nothing but
    ``latentops_gpu_nvml_available 0``.
    """

    def __init__(self) -> None:
        self._nvml: Any = None
        self._tried = False

    def _library(self) -> Any:
        if not self._tried:
            self._tried = True
            try:
                import pynvml  # nvidia-ml-py

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception as error:  # noqa: BLE001 - no library, no driver, no device: a CPU worker
                log.info("NVML unavailable (%s); GPU metrics off", error)
        return self._nvml

    @staticmethod
    def _visible(count: int) -> list[int]:
        wanted = os.environ.get("CUDA_VISIBLE_DEVICES")
        if wanted is None or not wanted.strip():
            return list(range(count))
        indices = [part.strip() for part in wanted.split(",")]
        if all(part.isdigit() for part in indices):
            return [int(part) for part in indices if int(part) < count]
        return list(range(count))  # UUIDs or MIG names: report every device the driver shows

    def describe(self) -> Iterator[Metric]:
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._families(self._library())
        except Exception:
            METRIC_ERRORS.labels("gpu").inc()
            log.warning("metrics: reading NVML failed", exc_info=True)

    def _families(self, nvml: Any) -> Iterator[Metric]:
        available = _gauge("latentops_gpu_nvml_available", "1 if NVML answered on this worker")
        utilisation = _gauge("latentops_gpu_utilization_percent", "GPU busy percentage over the last sample period",
                             ["gpu", "name"])
        used = _gauge("latentops_gpu_memory_used_bytes", "GPU memory in use (all processes)", ["gpu", "name"])
        total = _gauge("latentops_gpu_memory_total_bytes", "GPU memory installed", ["gpu", "name"])
        torch_allocated = _gauge("latentops_gpu_torch_allocated_bytes", "GPU memory held by this process's tensors",
                                 ["device"])
        available.add_metric([], 0.0 if nvml is None else 1.0)
        if nvml is not None:
            for index in self._visible(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                utilisation.add_metric([str(index), name], float(rates.gpu))
                used.add_metric([str(index), name], float(memory.used))
                total.add_metric([str(index), name], float(memory.total))
        torch = sys.modules.get("torch")  # never import torch for a scrape; report only if a job loaded it
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            for device in range(torch.cuda.device_count()):
                torch_allocated.add_metric([str(device)], float(torch.cuda.memory_allocated(device)))
        yield from (available, utilisation, used, total, torch_allocated)


_gpu_collector: GpuCollector | None = None
_gpu_lock = threading.Lock()


def enable_gpu_metrics() -> None:
    """Export GPU gauges from this process (workers call this once; idempotent)."""
    global _gpu_collector
    with _gpu_lock:
        if _gpu_collector is None:
            _gpu_collector = GpuCollector()
            REGISTRY.register(_gpu_collector)
