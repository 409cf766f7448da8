"""What the benchmarks share: the full-size CLIP architectures, FLOP counting, memory and
machine-load readings, the machine's description and the report's output. Every benchmark prints
its figures with `machine_info` (CPU model, threads, torch) and the load from other processes
(`OtherLoad`), since a figure without its machine and load means little.

Run a benchmark from the repository root as a module: `python -m benchmarks.distill_step --help`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import platform
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from promptkd.demo.tiny import TinySpec

MiB = 2**20
#: The repository root: the working directory of a benchmark's own subprocesses (`python -m benchmarks.X`).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# clip.model.CLIP(...) arguments of the OpenAI architectures (heads = width // 64 as in clip).
ARCHITECTURES = {
    "ViT-L/14": dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024,
                     vision_patch_size=14, context_length=77, vocab_size=49408,
                     transformer_width=768, transformer_heads=12, transformer_layers=12),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=16, context_length=77, vocab_size=49408,
                     transformer_width=512, transformer_heads=8, transformer_layers=12),
}
def tiny_architecture(spec: TinySpec) -> dict:
    return dict(embed_dim=spec.embed_dim, image_resolution=spec.image_resolution,
                vision_layers=spec.vision_layers, vision_width=spec.vision_width,
                vision_patch_size=spec.vision_patch_size, context_length=spec.context_length,
                vocab_size=spec.vocab_size, transformer_width=spec.text_width,
                transformer_heads=max(1, spec.text_width // 64), transformer_layers=spec.text_layers)


# ----------------------------------------------------------------------------------------------
# FLOPs: torch's counter has no formula for the CPU flash-attention kernel that
# nn.MultiheadAttention dispatches to on CPU, so attention matmuls would be silently dropped there.
# These count its two matmuls (forward) and five (backward) exactly like torch's GPU formulas,
# and the fused inference kernel batch-first attention blocks dispatch to under no_grad.

def _attn_fwd_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    b, h, sq, d = q
    sk, dv = k[2], v[3]
    return 2 * b * h * sq * sk * d + 2 * b * h * sq * sk * dv


def _attn_bwd_flops(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    b, h, sq, d = q
    sk, dv = k[2], v[3]
    return 2 * b * h * (sq * sk * d + sq * sk * dv + sk * sq * dv + sq * sk * d + d * sq * sk)


def _native_mha_flops(query, key, value, embed_dim, num_head, *args, out_shape=None, **kwargs) -> int:
    """nn.MultiheadAttention's fused inference kernel (batch-first blocks, e.g. open_clip's, under
    no_grad): in-projection of q, k, v, the two attention matmuls, the out-projection."""
    b, sq, e = query
    sk = key[1]
    return 2 * b * (sq * e * e + 2 * sk * e * e) + 2 * 2 * b * sq * sk * e + 2 * b * sq * e * e


def flop_mapping() -> dict:
    from torch.utils import flop_counter

    registry = getattr(flop_counter, "flop_registry", {})
    extra = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _attn_fwd_flops),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _attn_bwd_flops),
                          ("_native_multi_head_attention", _native_mha_flops)):
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in registry:
            extra[op] = formula
    return extra


def count_flops(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        fn()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------
# Memory

def read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        try:
            ctypes.CDLL(libc_name).malloc_trim(0)  # glibc keeps freed arenas in RSS otherwise
        except (OSError, AttributeError):
            pass


class PeakMemory:
    """Peak memory of one setting, above what was in use before it (models are resident)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = ""
        self.peak_bytes = None
        self.absolute_bytes = None

    def __enter__(self):
        release_free_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            self.reset = reset_peak_rss()
            self.before = (read_status_kib("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.absolute_bytes = torch.cuda.max_memory_allocated(self.device)
            self.peak_bytes = self.absolute_bytes - self.before
            self.kind = "CUDA max_memory_allocated above the allocation before the setting"
            return False
        hwm = read_status_kib("VmHWM")
        if hwm is None:  # no /proc (not Linux): lifetime peak of the whole process
            import resource

            scale = 1 if sys.platform == "darwin" else 1024
            self.absolute_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            self.peak_bytes = None
            self.kind = "process-wide lifetime peak RSS (getrusage); not per setting"
        elif self.reset:
            self.absolute_bytes = hwm * 1024
            self.peak_bytes = self.absolute_bytes - self.before
            self.kind = "CPU peak RSS (VmHWM, reset per setting) above the RSS before the setting; process-wide"
        else:
            self.absolute_bytes = hwm * 1024
            self.peak_bytes = None
            self.kind = "process-wide lifetime peak RSS (VmHWM could not be reset); not per setting"
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)




class OtherLoad:
    """CPU time used by *other* processes while a run lasts, in cores (Linux /proc only).

    This machine may be shared: a wall time measured while other jobs run is inflated, and
    this says by how much the box was busy besides us.
    """

    def __enter__(self):
        self.start = self._sample()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        end, dt = self._sample(), time.perf_counter() - self.t0
        self.cores = None
        if self.start and end and dt > 0:
            busy = end[0] - self.start[0]
            ours = end[1] - self.start[1]
            self.cores = max(0.0, (busy - ours) / os.sysconf("SC_CLK_TCK") / dt)
        return False

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            busy = sum(v[:8]) - v[3] - (v[4] if len(v) > 4 else 0)  # all but idle and iowait
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return busy, int(fields[11]) + int(fields[12])  # utime + stime of this process
        except (OSError, ValueError, IndexError):
            return None


def machine_info(device: torch.device) -> dict:
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu or platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1])
        info["ram_gib"] = round(mem / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def emit(report: dict, text: str, json_path: str | None) -> None:
    """Print the rendered table; with --json, also write the report and the table there."""
    print(text)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({**report, "table": text}, f, indent=2)


def train_run(run: str, args: list, cwd: str) -> dict:
    """`promptkd train ARGS` in a fresh one-thread process (the demo benchmarks run several at
    once); its result.json metrics ({} when it evaluated nothing). A failed run is an error
    with the end of its stderr."""
    import subprocess  # noqa: PLC0415

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "promptkd", "train", *args], capture_output=True, text=True,
                          env=env, cwd=cwd)
    if proc.returncode:
        raise RuntimeError(f"{run} failed:\n{proc.stderr[-3000:]}")
    result = os.path.join(run, "result.json")
    if not os.path.exists(result):
        return {}
    with open(result) as f:
        return json.load(f)["metrics"]
