"""What ROCm's amdsmi reports for each AMD GPU, asked in a subprocess.

Run by `mcp_server.gpu.amd.AmdSmiBackend` with the server's own interpreter: amdsmi is never
imported in the server, because without ROCm its import prints to stdout (the MCP wire) and
raises KeyError. Here that noise stays in this process's output. Imports only the standard
library and amdsmi. Prints one JSON object on its last stdout line: {"devices": [...]}, each
device's raw amdsmi answers with what failed under "unavailable", or {"error": ...}.
"""

from __future__ import annotations

import json


def safe(fn, *args):
    """(answer, None), or (None, why) for a query this card or driver does not support."""
    try:
        return fn(*args), None
    except Exception as exc:  # noqa: BLE001 - one failed query is one unknown figure
        return None, f"{type(exc).__name__}: {exc}"[:200]


def device(amdsmi, handle) -> dict:
    d, miss = {}, {}
    temperature = (
        amdsmi.amdsmi_get_temp_metric,
        (handle, amdsmi.AmdSmiTemperatureType.EDGE, amdsmi.AmdSmiTemperatureMetric.CURRENT),
    )
    for key, (fn, args) in {
        "asic": (amdsmi.amdsmi_get_gpu_asic_info, (handle,)),
        "vram": (amdsmi.amdsmi_get_gpu_vram_usage, (handle,)),
        "activity": (amdsmi.amdsmi_get_gpu_activity, (handle,)),
        "power": (amdsmi.amdsmi_get_power_info, (handle,)),
        "processes": (amdsmi.amdsmi_get_gpu_process_list, (handle,)),
        "uuid": (amdsmi.amdsmi_get_gpu_device_uuid, (handle,)),
        "bdf": (amdsmi.amdsmi_get_gpu_device_bdf, (handle,)),
        "temperature": temperature,
    }.items():
        d[key], why = safe(fn, *args)
        if why:
            miss[key] = why
    d["unavailable"] = miss
    return d


def main() -> None:
    try:
        import amdsmi

        amdsmi.amdsmi_init()
    except BaseException as exc:  # noqa: BLE001 - amdsmi without ROCm raises KeyError, even SystemExit
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:300]}))
        return
    out = [device(amdsmi, h) for h in amdsmi.amdsmi_get_processor_handles()]
    safe(amdsmi.amdsmi_shut_down)
    print(json.dumps({"devices": out}, default=str))


if __name__ == "__main__":
    main()
