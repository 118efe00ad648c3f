"""Peak dense TFLOP/s by device name and dtype, and MFU. Unknown devices get no made-up peak."""
from __future__ import annotations

# Dense (no sparsity) peaks from the vendors' data sheets. fp16 = bf16; fp8 = 2 x bf16 on Hopper
# and Blackwell. "float32" is the non-tensor-core rate; "tf32" the tensor-core rate torch uses
# for fp32 matmuls when TF32 is enabled. Missing entries mean "not known": MFU stays empty.
PEAKS: dict[str, dict[str, float]] = {
    "A100": {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0, "float16": 312.0},
    "H100 SXM": {"float32": 67.0, "tf32": 494.0, "bfloat16": 989.0, "float16": 989.0, "fp8": 1979.0},
    "H100 PCIe": {"float32": 51.0, "tf32": 378.0, "bfloat16": 756.0, "float16": 756.0, "fp8": 1513.0},
    # H100 NVL (94 GB): the data sheet's with-sparsity figures halved (TF32 835, BF16 1671, FP8 3341)
    "H100 NVL": {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5, "float16": 835.5, "fp8": 1670.5},
    "H200": {"float32": 67.0, "tf32": 494.0, "bfloat16": 989.0, "float16": 989.0, "fp8": 1979.0},
    # H200 NVL (141 GB, PCIe card): the same data-sheet figures as the H100 NVL, halved likewise
    "H200 NVL": {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5, "float16": 835.5, "fp8": 1670.5},
    "B200": {"tf32": 1100.0, "bfloat16": 2250.0, "float16": 2250.0, "fp8": 4500.0},
    "GB200": {"tf32": 1250.0, "bfloat16": 2500.0, "float16": 2500.0, "fp8": 5000.0},
}


def match_device(name: str) -> str | None:
    """Map a framework's device name (e.g. 'NVIDIA H100 80GB HBM3') to a PEAKS key, or None."""
    n = name.upper()
    if "GB200" in n:
        return "GB200"
    if "B200" in n:
        return "B200"
    if "H200" in n:
        return "H200 NVL" if "NVL" in n else "H200"  # GH200's GPU has the H200 SXM's peaks
    if "H100" in n:
        if "NVL" in n:
            return "H100 NVL"
        return "H100 PCIe" if "PCIE" in n else "H100 SXM"  # SXM parts report "HBM3" or "SXM"
    if "A100" in n:
        return "A100"
    return None


def peak_tflops(device_name: str, dtype: str, override: float = 0.0) -> float | None:
    """Peak TFLOP/s per device for this dtype; the override (>0) wins; None when unknown."""
    if override and override > 0:
        return float(override)
    key = match_device(device_name or "")
    if key is None:
        return None
    return PEAKS[key].get(dtype)


def mfu(flops_per_token: float, tokens_per_sec: float, peak: float | None, n_devices: int = 1) -> float | None:
    """Model FLOPs utilization as a fraction in [0, 1], or None when the peak is unknown."""
    if not peak or tokens_per_sec <= 0:
        return None
    return flops_per_token * tokens_per_sec / (peak * 1e12 * n_devices)


def accelerator_visible(device: str = "auto") -> tuple[bool, str]:
    """(whether a run would find an accelerator, why), without importing a framework: for the commands
    that resolve size=auto as a run would (modgpt.config, flops, memory). --device decides when set;
    otherwise an NVIDIA device node (/dev/nvidia0...) or a TPU (/dev/accel0...) not hidden by
    CUDA_VISIBLE_DEVICES or JAX_PLATFORMS=cpu. The train commands ask their framework instead."""
    import glob
    import os
    if device == "cpu":
        return False, "--device=cpu"
    if device in ("cuda", "gpu"):
        return True, f"--device={device}"
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return False, "JAX_PLATFORMS=cpu"
    nodes = glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/accel[0-9]*")
    if not nodes:
        return False, "no accelerator device (/dev/nvidia*, /dev/accel*) on this machine"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1") and not glob.glob("/dev/accel[0-9]*"):
        return False, "CUDA_VISIBLE_DEVICES hides the GPUs"
    return True, f"{nodes[0]} found"
