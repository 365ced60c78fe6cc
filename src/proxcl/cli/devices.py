"""proxcl devices: list OpenCL platforms and devices."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("devices", help="list OpenCL platforms and devices",
                       description="List every OpenCL platform and device with its index "
                                   "(usable as --device P:D), OpenCL C version, compute units "
                                   "and memory sizes; then each platform's version, the device "
                                   "used without --device ($PROXCL_DEVICE, else the first real "
                                   "GPU, else the first CPU) and what is special about a device "
                                   "(simulators are chosen only by name or index; llvmpipe).")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..runtime import list_devices
    devs = list_devices()
    if args.json:
        print(json.dumps(devs, indent=2))
        return 0
    cw = max([len("OpenCL C")] + [len(d["opencl_c"]) for d in devs])    # versions are never cut
    print(f"{'index':<6} {'platform':<30} {'device':<34} {'type':<5} {'OpenCL C':<{cw}} "
          f"{'CUs':>4} {'global MiB':>11} {'local KiB':>10}")
    for d in devs:
        print(f"{d['index']:<6} {d['platform'][:30]:<30} {d['name'][:34]:<34} {d['type'][:5]:<5} "
              f"{d['opencl_c']:<{cw}} {d['compute_units']:>4} {d['global_mem_bytes'] >> 20:>11} "
              f"{d['local_mem_bytes'] >> 10:>10}")
    print(f"\n{'index':<6} platform version; the device used without --device, and what is special")
    for d in devs:   # each platform's version in full, and what is special about the device
        flags = (["used without --device"] if d["default"] else []) + d["notes"]
        print(f"{d['index']:<6} {d['platform_version']}" + "".join(f"\n{'':<8}{f}" for f in flags))
    return 0
