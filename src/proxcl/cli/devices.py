"""proxcl devices: list OpenCL platforms and devices."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("devices", help="list OpenCL platforms and devices",
                       description="List every OpenCL platform and device with its index "
                                   "(usable as --device P:D), platform version, notes (the device "
                                   "used without --device: $PROXCL_DEVICE, else the first real "
                                   "GPU, else the first CPU; simulators, which are chosen only by "
                                   "name or index; llvmpipe's loop cap), OpenCL C version, compute "
                                   "units and memory sizes.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..runtime import list_devices
    devs = list_devices()
    if args.json:
        print(json.dumps(devs, indent=2))
        return 0
    for d in devs:   # the device used without --device, and what is special about a device
        d["flags"] = "; ".join((["used without --device"] if d["default"] else []) + d["notes"]) or "-"

    def width(key, title):   # nothing is cut: platform versions, names, notes, OpenCL C versions
        return max([len(title)] + [len(d[key]) for d in devs])
    pw, vw, nw = width("platform", "platform"), width("platform_version", "platform version"), width("name", "device")
    fw, cw, tw = width("flags", "notes"), width("opencl_c", "OpenCL C"), width("type", "type")
    print(f"{'index':<6}  {'platform':<{pw}}  {'platform version':<{vw}}  {'device':<{nw}}  {'type':<{tw}}  "
          f"{'notes':<{fw}}  {'OpenCL C':<{cw}}  {'CUs':>4}  {'global MiB':>11}  {'local KiB':>10}")
    for d in devs:
        print(f"{d['index']:<6}  {d['platform']:<{pw}}  {d['platform_version']:<{vw}}  {d['name']:<{nw}}  "
              f"{d['type']:<{tw}}  {d['flags']:<{fw}}  {d['opencl_c']:<{cw}}  {d['compute_units']:>4}  "
              f"{d['global_mem_bytes'] >> 20:>11}  {d['local_mem_bytes'] >> 10:>10}")
    return 0
