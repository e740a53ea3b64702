"""What torch looks like from this interpreter: version, build, the devices it sees and their UUIDs.

Run by the server (`mcp_server.preflight.probe_torch`) with the trainer's interpreter, under
the device variables the run will have (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER, ...), so
torch's device i here is the run's cuda:i. Imports only the standard library and torch
(`mcp_server` may not be importable here). Prints one JSON object on its last stdout line.
"""

from __future__ import annotations

import json
import sys

HEX = frozenset(b"0123456789abcdefABCDEF")


def device_uuid(raw: bytes | None) -> str | None:
    """A device's UUID in the form its driver's tools print, from the 16 bytes torch holds.

    CUDA's are binary: NVML and nvidia-smi write them "GPU-" + 8-4-4-4-12 hex digits (torch's
    own str() leaves out the prefix). ROCm fills the 16 bytes with the ASCII hex digits of the
    card's unique id, which rocminfo writes "GPU-" + those digits.
    """
    if not raw or len(raw) != 16 or not any(raw):
        return None
    if all(b in HEX for b in raw):
        return "GPU-" + raw.decode("ascii").lower()
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _uuid_of(torch, index: int) -> str | None:
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)  # torch >= 2.4
    return device_uuid(getattr(uuid, "bytes", None))


def main() -> None:
    info = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "prefix": sys.prefix,
        "base_prefix": sys.base_prefix,
    }
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure is the answer
        info["torch_error"] = f"{type(exc).__name__}: {exc}"
    else:
        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        info["hip"] = getattr(torch.version, "hip", None)
        info["cuda_available"] = torch.cuda.is_available()
        info["device_count"] = torch.cuda.device_count() if info["cuda_available"] else 0
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(info["device_count"])]
        info["uuids"] = [_uuid_of(torch, i) for i in range(info["device_count"])]
        mps = getattr(torch.backends, "mps", None)
        info["mps_available"] = bool(mps and mps.is_available())
    print(json.dumps(info))


if __name__ == "__main__":
    main()
