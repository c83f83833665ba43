"""Device and mixed precision: which device a run uses, autocast and the GradScaler."""
import sys

import torch

from codebase.config import ConfigError
from codebase.runtime import distributed

AMP_SETTINGS = ("auto", "bf16", "fp16", "off")


def resolve_device(spec: str = "auto") -> torch.device:
    """"auto" -> cuda, then mps, then cpu. Under torchrun, CUDA means this process's local GPU."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return resolve_device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device='mps': MPS is not available here; use --device auto or cpu")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={spec!r}: CUDA is not available here; use --device auto or cpu")
        index = distributed.local_rank() if spec == "cuda" else _device_index(spec)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={spec!r}: GPU {index} does not exist; this machine has "
                              f"{torch.cuda.device_count()} (cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", index)
    raise ConfigError(f"device={spec!r}: expected auto, cpu, cuda, cuda:N or mps")


def _device_index(spec: str) -> int:
    try:
        return int(spec.split(":", 1)[1])
    except ValueError:
        raise ConfigError(f"device={spec!r}: expected cuda:N with N a GPU number") from None


def amp_dtype(device: torch.device, setting: str) -> torch.dtype | None:
    """Autocast dtype: "auto" = bf16 on CUDA where supported, else fp16 on CUDA, off elsewhere."""
    if setting not in AMP_SETTINGS:
        raise ConfigError(f"amp={setting!r}: expected one of {', '.join(AMP_SETTINGS)}")
    if setting == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[setting]


def autocast(device: torch.device, setting: str) -> torch.autocast:
    """Context manager for the forward pass and loss (a no-op when AMP is off)."""
    dtype = amp_dtype(device, setting)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def make_grad_scaler(device: torch.device, setting: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16; a disabled one passes scale/step/update straight through."""
    enabled = amp_dtype(device, setting) == torch.float16
    if enabled and device.type == "cpu" and distributed.is_main_process():
        print(f"warning: train.amp={setting!r} on the CPU: float16 autocast runs there about 10x slower than "
              "float32 and gains nothing; use train.amp=off (or auto, or bf16)", file=sys.stderr)
    return torch.amp.GradScaler(device.type, enabled=enabled)


def scaled(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
    """``loss`` times the GradScaler's scale when it is enabled (fp16), else ``loss``."""
    return scaler.scale(loss) if scaler is not None and scaler.is_enabled() else loss

