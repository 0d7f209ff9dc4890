"""Where the time of an int8 run goes: OpenVINO's per-node performance counters (``PERF_COUNT``,
``get_profiling_info``) on the very QDQ model ``export --int8`` writes, grouped by layer kind
(the stem, 1x1 and 3x3 convs, strided or grouped, a conv with the residual add fused, the max
pool, reorders, the global pool, the dense layer), per image, at each batch asked; and, for the
bench's peer, torch.ao's int8 model of torchvision (``torch.int8_bench``'s) by torch.profiler op.

    python -m shared.tools.adapters.openvino_profile --arch resnet50 --size 224 --batch 1,8
    python -m shared.tools.adapters.openvino_profile --arch resnet50 --size 224 --batch 1,8 --runtime torch.ao

Each runtime in a process of its own (runtimes sharing a process disturb each other). The
counters add up to a little less than the wall time (the gaps between nodes); a node's time is
the median over the iterations.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time

import numpy as np

from shared import spec as S, weights as W
from shared.tools.adapters import onnx_int8
from shared.tools.adapters.openvino import compile_model


def conv_kind(layer: S.Conv, stem: bool) -> str:
    """A conv's kind: ``stem 7x7/2``, ``1x1``, ``3x3/2``, ``3x3 g32`` (grouped)."""
    k = f"{layer.kernel_size}x{layer.kernel_size}" + (f"/{layer.stride}" if layer.stride > 1 else "")
    return ("stem " if stem else "") + k + (f" g{layer.groups}" if layer.groups > 1 else "")


def kinds(compiled, spec: S.ResNetSpec) -> dict[str, str]:
    """{runtime node: its kind}: a convolution by the spec's conv it computes (``conv_kind``),
    ``+ add`` where a residual add is fused into it; any other node by its OpenVINO type."""
    stem = {layer.name for layer in spec.stem() if isinstance(layer, S.Conv)}
    convs = {layer.name: conv_kind(layer, layer.name in stem) for layer in spec.layers() if isinstance(layer, S.Conv)}
    adds = {layer.name for layer in spec.layers() if getattr(layer, "kind", "") == "add"}
    out = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)  # original names: the ONNX node's, or ``conv1_conv/WithoutBiases``
        fused = {n.split("/")[0] for n in info["originalLayersNames"].astype(str).split(",")}
        conv = next((convs[n] for n in sorted(fused) if n in convs), None)
        if kind == "Convolution" and conv:
            kind = f"conv {conv}" + (" + add" if fused & adds else "")
        out[op.get_friendly_name()] = kind
    return out


def _timed(request, x, names: dict, walls: list, times: dict, execs: dict) -> None:
    """One run of ``x``: its wall time, each executed node's time (ms) and kernel."""
    start = time.perf_counter()
    request.infer({0: x})
    walls.append(time.perf_counter() - start)
    for node in request.get_profiling_info():
        if node.status == node.Status.EXECUTED:
            times[node.node_name].append(node.real_time.total_seconds() * 1e3)
            execs[names.get(node.node_name, node.node_type)].add(node.exec_type)


def grouped(names: dict, walls: list, times: dict, execs: dict) -> dict:
    """{"wall_ms", "kinds": {kind: {"ms", "nodes", "exec_types"}}}: each node's *least* time over
    the runs, summed by kind (on a shared machine the least is the time uncontended; the median
    would measure the neighbours), and the least wall time."""
    out: dict[str, dict] = {}
    for node, ms in times.items():
        row = out.setdefault(names.get(node, "other"), {"ms": 0.0, "nodes": 0})
        row["ms"] += float(np.min(ms))
        row["nodes"] += 1
    for kind, row in out.items():
        row["exec_types"] = sorted(execs[kind])
    return {"wall_ms": float(np.min(walls)) * 1e3, "kinds": dict(sorted(out.items(), key=lambda kv: -kv[1]["ms"]))}


def openvino_int8(spec: S.ResNetSpec, weights: dict, size: int, batches: list[int], iters: int,
                  config: dict | None = None) -> dict:
    """Per batch, ``grouped`` for the openvino-int8 target's model (``export --int8``'s, as the
    bench builds it; a static shape each, as the bench compiles) on seeded images, compiled
    with ``PERF_COUNT`` (and ``config``), the batches run in turn, ``iters`` rounds."""
    import openvino as ov

    fspec, _, model = onnx_int8.build(spec, weights, size)
    core, runs = ov.Core(), {}
    for batch in batches:
        ir = core.read_model(model.SerializeToString())
        ir.reshape({ir.inputs[0]: ov.PartialShape([batch, spec.image_channels, size, size])})
        compiled = compile_model(ir, config={"PERF_COUNT": True, **(config or {})})
        x = np.random.default_rng(0).standard_normal((batch, spec.image_channels, size, size)).astype(np.float32)
        request = compiled.create_infer_request()
        request.infer({0: x})  # warm up
        runs[batch] = (request, x, kinds(compiled, fspec), [], collections.defaultdict(list),
                       collections.defaultdict(set))
    for _ in range(iters):
        for request, x, *found in runs.values():
            _timed(request, x, *found)
    return {batch: grouped(*found) for batch, (_, _, *found) in runs.items()}


# CPU properties a deployment might set; none changes what is computed (the sweep checks the logits).
SETTINGS = {
    "default (LATENCY)": {},
    "no CPU pinning": {"ENABLE_CPU_PINNING": False},
    "THROUGHPUT, 1 request": {"PERFORMANCE_HINT": "THROUGHPUT"},
    "THROUGHPUT, 2 streams x half batch": {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2},
    "1 thread": {"INFERENCE_NUM_THREADS": 1},
}


def sweep(spec: S.ResNetSpec, weights: dict, size: int, batch: int, iters: int) -> dict:
    """images/s (least and median batch time over ``iters`` rounds, the settings in turn) of the
    openvino-int8 model at ``batch`` under each of ``SETTINGS``; with 2 streams the batch is run
    as two half batches at once (``AsyncInferQueue``). ``same_logits``: bit-equal to the default's."""
    import openvino as ov

    _, _, model = onnx_int8.build(spec, weights, size)
    x = np.random.default_rng(0).standard_normal((batch, spec.image_channels, size, size)).astype(np.float32)
    runs = {}
    for name, config in SETTINGS.items():
        parts = config.get("NUM_STREAMS", 1)
        ir = ov.Core().read_model(model.SerializeToString())
        ir.reshape({ir.inputs[0]: ov.PartialShape([batch // parts, spec.image_channels, size, size])})
        compiled = compile_model(ir, config=config)
        queue, chunks = ov.AsyncInferQueue(compiled, parts), np.split(x, parts)
        logits = [None] * parts
        queue.set_callback(lambda request, i, logits=logits: logits.__setitem__(i, request.get_output_tensor(0).data.copy()))

        def run(queue=queue, chunks=chunks, logits=logits):
            for i, chunk in enumerate(chunks):
                queue.start_async({0: chunk}, i)
            queue.wait_all()
            return np.concatenate(logits)

        runs[name] = (run, run(), [])
    for _ in range(iters):
        for run, _, times in runs.values():
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    base = runs["default (LATENCY)"][1]
    return {name: {"images_per_s_best": batch / min(times), "images_per_s_median": batch / float(np.median(times)),
                   "same_logits": bool(np.array_equal(out, base)), "config": SETTINGS[name]}
            for name, (_, out, times) in runs.items()}


def torch_ao(spec: S.ResNetSpec, weights: dict, size: int, batches: list[int], iters: int) -> dict:
    """Per batch, torch.ao's int8 model of torchvision's (the torch-int8 bench row's, channels_last)
    by torch.profiler op, self CPU time, as ``grouped`` takes it (the least over the runs;
    the batches in turn): {"wall_ms", "kinds": {op: {"ms", "nodes": calls a run}}}."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from shared.tools.adapters import torch as T
    from shared.tools.jobs import Job

    steps, found = {}, {}
    for batch in batches:
        job = Job("bench", "torch", spec.to_dict(), "", batch=batch, size=size, impl="int8", mode="infer",
                  channels_last=True)
        steps[batch] = T.int8_bench(job, spec, weights).step
        steps[batch]()  # warm up
        found[batch] = ({}, [], collections.defaultdict(list), collections.defaultdict(set))
    for _ in range(iters):
        for batch, step in steps.items():
            names, walls, times, _ = found[batch]
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                start = time.perf_counter()
                step()
                walls.append(time.perf_counter() - start)
            for event in prof.key_averages():
                if event.self_cpu_time_total > 0:
                    times[event.key].append(event.self_cpu_time_total / 1e3)
                    names[event.key] = event.key
    out = {}
    for batch, (names, walls, times, execs) in found.items():
        out[batch] = grouped(names, walls, times, execs)
        for op, row in out[batch]["kinds"].items():
            row.pop("exec_types")
    return out


def table(found: dict) -> str:
    """Markdown: each kind's ms per image at each batch, its share, and the ratio to batch 1's."""
    batches = sorted(found)
    rows = {k for b in batches for k in found[b]["kinds"]}
    per_image = {b: {k: v["ms"] / b for k, v in found[b]["kinds"].items()} for b in batches}
    head = "| kind | " + " | ".join(f"ms/image b{b} (share)" for b in batches) + " | " + \
        " | ".join(f"b{b}/b{batches[0]}" for b in batches[1:]) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(batches) - 1)]
    last = batches[-1]
    for kind in sorted(rows, key=lambda k: -per_image[last].get(k, 0)):
        cells = []
        for b in batches:
            ms, total = per_image[b].get(kind, 0.0), sum(per_image[b].values())
            cells.append(f"{ms:.3f} ({100 * ms / total:.1f}%)")
        ratios = [f"{per_image[b].get(kind, 0) / per_image[batches[0]][kind]:.2f}" if per_image[batches[0]].get(kind)
                  else "-" for b in batches[1:]]
        lines.append(f"| {kind} | " + " | ".join(cells + ratios) + " |")
    walls = [f"{found[b]['wall_ms'] / b:.2f}" for b in batches]
    lines.append("| **wall** | " + " | ".join(walls) + " | " +
                 " | ".join(f"{found[b]['wall_ms'] / b / (found[batches[0]]['wall_ms'] / batches[0]):.2f}"
                            for b in batches[1:]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.tools.adapters.openvino_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=S.ARCHS, default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", default="1,8", help="batches, comma-separated")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="the weights' (W.init), as bench's")
    parser.add_argument("--runtime", choices=("openvino", "torch.ao"), default="openvino")
    parser.add_argument("--sweep", action="store_true", help="images/s at the last batch under each of SETTINGS")
    parser.add_argument("--config", default="{}", help='OpenVINO properties as JSON, e.g. \'{"ENABLE_CPU_PINNING": false}\'')
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    spec = S.preset(args.arch)
    weights, batches = W.init(spec, seed=args.seed), [int(b) for b in args.batch.split(",")]
    if args.sweep:
        found = sweep(spec, weights, args.size, batches[-1], args.iters)
        for name, row in found.items():
            print(f"{name}: {row['images_per_s_best']:.1f} images/s best, {row['images_per_s_median']:.1f} median; "
                  f"logits {'bit-equal to' if row['same_logits'] else 'DIFFER from'} the default's")
    elif args.runtime == "openvino":
        found = openvino_int8(spec, weights, args.size, batches, args.iters, json.loads(args.config))
    else:
        found = torch_ao(spec, weights, args.size, batches, args.iters)
    load = os.getloadavg()
    if not args.sweep:
        print(table(found))
    print(f"{args.runtime} int8, {args.arch} {args.size} px, {args.iters} iterations; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        from shared.tools.jobs import write_json

        write_json(args.json, {"runtime": args.runtime, "arch": args.arch, "size": args.size, "iters": args.iters,
                               "config": json.loads(args.config), "loadavg": load, "profile": found})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
