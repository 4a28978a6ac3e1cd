"""Pick the torch device the runner uses."""

import torch


class DeviceUnavailable(RuntimeError):
    """The requested device does not exist on this machine."""


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' fails loudly instead of silently running on CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                "device 'cuda' was requested but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use 'cpu' or 'auto'"
            )
        return torch.device("cuda")
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {name!r}")
