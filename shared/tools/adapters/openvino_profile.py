"""Where the time of an int8 run goes: OpenVINO's per-node performance counters (``PERF_COUNT``,
``get_profiling_info``) on the very QDQ model ``export --int8`` writes, grouped by layer kind
(the stem, 1x1 and 3x3 convs, strided or grouped, a conv with the residual add fused, the max
pool, reorders, the global pool, the dense layer), per image, at each batch asked; and, for the
bench's torch rows (torch.ao's int8 model of torchvision, ``torch.int8_bench``'s, and the
torchvision fp32 anchor, channels_last), torch.profiler by op.

    python -m shared.tools.adapters.openvino_profile --arch resnet50 --batch 1,8 [--threads 1]
    python -m shared.tools.adapters.openvino_profile --arch resnet50 --batch 1,8 --runtime torch.ao
    python -m shared.tools.adapters.openvino_profile --arch resnet50 --batch 8 --sweep

Each runtime in a process of its own (runtimes sharing a process disturb each other); the
batches run in turn. On a shared machine every figure is the *least* over the runs (the median
would measure the neighbours), and beside the wall time is the process's CPU time: on one
thread (``--threads 1``) it is the work itself, whatever the load.
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


class Runs:
    """One batch's runs: wall and process CPU time of each, and each node's (or op's) time (ms)."""

    def __init__(self, names: dict | None = None):
        self.names, self.clock = names if names is not None else {}, []
        self.times, self.execs = collections.defaultdict(list), collections.defaultdict(set)

    def timed(self, run) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        self.clock.append((time.perf_counter() - wall, time.process_time() - cpu))

    def grouped(self) -> dict:
        """{"wall_ms", "cpu_ms", "kinds": {kind: {"ms", "nodes", "exec_types"}}}: each node's least
        time over the runs, summed by kind; the least wall and CPU times."""
        out: dict[str, dict] = {}
        for node, ms in self.times.items():
            kind = self.names.get(node, "other")
            row = out.setdefault(kind, {"ms": 0.0, "nodes": 0, "exec_types": sorted(self.execs[kind])})
            row["ms"] += float(np.min(ms))
            row["nodes"] += 1
        walls, cpus = zip(*self.clock)
        return {"wall_ms": min(walls) * 1e3, "cpu_ms": min(cpus) * 1e3,
                "kinds": dict(sorted(out.items(), key=lambda kv: -kv[1]["ms"]))}


def openvino_int8(spec: S.ResNetSpec, weights: dict, size: int, batches: list[int], iters: int,
                  config: dict | None = None) -> dict:
    """{batch: ``Runs.grouped``} of the openvino-int8 target's model (``export --int8``'s, as the
    bench builds it; a static shape each, as the bench compiles) on seeded images, compiled with
    ``PERF_COUNT`` (and ``config``), the batches in turn, ``iters`` rounds."""
    import openvino as ov

    fspec, _, model = onnx_int8.build(spec, weights, size)
    found = {}
    for batch in batches:
        ir = ov.Core().read_model(model.SerializeToString())
        ir.reshape({ir.inputs[0]: ov.PartialShape([batch, spec.image_channels, size, size])})
        compiled = compile_model(ir, config={"PERF_COUNT": True, **(config or {})})
        x = np.random.default_rng(0).standard_normal((batch, spec.image_channels, size, size)).astype(np.float32)
        request = compiled.create_infer_request()
        request.infer({0: x})  # warm up
        found[batch] = (lambda request=request, x=x: request.infer({0: x}), request, Runs(kinds(compiled, fspec)))
    for _ in range(iters):
        for run, request, runs in found.values():
            runs.timed(run)
            for node in request.get_profiling_info():
                if node.status == node.Status.EXECUTED:
                    runs.times[node.node_name].append(node.real_time.total_seconds() * 1e3)
                    runs.execs[runs.names.get(node.node_name, node.node_type)].add(node.exec_type)
    return {batch: runs.grouped() for batch, (_, _, runs) in found.items()}


# CPU properties a deployment might set; none changes what is computed (the sweep checks the logits).
SETTINGS = {
    "default (LATENCY)": {},
    "no CPU pinning": {"ENABLE_CPU_PINNING": False},
    "THROUGHPUT, 1 request": {"PERFORMANCE_HINT": "THROUGHPUT"},
    "THROUGHPUT, 2 streams x half batch": {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2},
    "1 thread": {"INFERENCE_NUM_THREADS": 1},
}


def sweep(spec: S.ResNetSpec, weights: dict, size: int, batch: int, iters: int) -> dict:
    """images/s (from the least and the median batch time over ``iters`` rounds, the settings in
    turn) and the least process CPU time an image of the openvino-int8 model at ``batch`` under
    each of ``SETTINGS``; with 2 streams the batch runs as two half batches at once
    (``AsyncInferQueue``). ``same_logits``: bit-equal to the default's."""
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

        runs[name] = (run, run(), Runs())
    for _ in range(iters):
        for run, _, clock in runs.values():
            clock.timed(run)
    base = runs["default (LATENCY)"][1]
    out = {}
    for name, (_, logits, clock) in runs.items():
        walls, cpus = zip(*clock.clock)
        out[name] = {"images_per_s_best": batch / min(walls), "images_per_s_median": batch / float(np.median(walls)),
                     "cpu_ms_per_image": min(cpus) * 1e3 / batch, "same_logits": bool(np.array_equal(logits, base)),
                     "config": SETTINGS[name]}
    return out


def torch_run(spec: S.ResNetSpec, weights: dict, size: int, batches: list[int], iters: int,
              impl: str = "int8") -> dict:
    """{batch: ``Runs.grouped``} by torch.profiler op (self CPU time) of the bench's torch rows:
    ``impl="int8"`` torch.ao's int8 model of torchvision's, ``"reference"`` torchvision fp32,
    channels_last, the batches in turn, ``iters`` rounds."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from shared.tools.adapters import torch as T
    from shared.tools.jobs import Job

    found = {}
    for batch in batches:
        job = Job("bench", "torch", spec.to_dict(), "", batch=batch, size=size, impl=impl, mode="infer",
                  channels_last=True)
        step = T.run_bench(job, spec, weights).step
        step()  # warm up
        found[batch] = (step, Runs())
    for _ in range(iters):
        for step, runs in found.values():
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                runs.timed(step)
            for event in prof.key_averages():
                if event.self_cpu_time_total > 0:
                    runs.times[event.key].append(event.self_cpu_time_total / 1e3)
                    runs.names[event.key] = event.key
    return {batch: runs.grouped() for batch, (_, runs) in found.items()}


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
    for clock in ("wall_ms", "cpu_ms"):
        first = found[batches[0]][clock] / batches[0]
        lines.append(f"| **{clock[:-3]} (least)** | " + " | ".join(f"{found[b][clock] / b:.2f}" for b in batches) + " | "
                     + " | ".join(f"{found[b][clock] / b / first:.2f}" for b in batches[1:]) + " |")
    return "\n".join(lines)


RUNTIMES = {"openvino": "OpenVINO int8", "torch.ao": "torch.ao int8", "torchvision": "torchvision fp32"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.tools.adapters.openvino_profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=S.ARCHS, default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", default="1,8", help="batches, comma-separated")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="the weights' (W.init), as bench's")
    parser.add_argument("--runtime", choices=list(RUNTIMES), default="openvino",
                        help="openvino: the openvino-int8 target; torch.ao, torchvision: the bench's torch rows")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: the runtime's, all cores)")
    parser.add_argument("--sweep", action="store_true", help="OpenVINO: images/s at the last batch under each of SETTINGS")
    parser.add_argument("--config", default="{}", help='further OpenVINO properties as JSON ({"ENABLE_CPU_PINNING": false})')
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    spec = S.preset(args.arch)
    weights, batches = W.init(spec, seed=args.seed), [int(b) for b in args.batch.split(",")]
    config = {**json.loads(args.config), **({"INFERENCE_NUM_THREADS": args.threads} if args.threads else {})}
    if args.runtime != "openvino" and args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.sweep:
        found = sweep(spec, weights, args.size, batches[-1], args.iters)
        for name, row in found.items():
            print(f"{name}: {row['images_per_s_best']:.1f} images/s best, {row['images_per_s_median']:.1f} median, "
                  f"CPU {row['cpu_ms_per_image']:.2f} ms an image (least); logits "
                  f"{'bit-equal to' if row['same_logits'] else 'DIFFER from'} the default's")
    elif args.runtime == "openvino":
        found = openvino_int8(spec, weights, args.size, batches, args.iters, config)
    else:
        found = torch_run(spec, weights, args.size, batches, args.iters, "int8" if args.runtime == "torch.ao" else "reference")
    load = os.getloadavg()
    if not args.sweep:
        print(table(found))
    print(f"{RUNTIMES[args.runtime]}, {args.arch} {args.size} px, {args.threads or 'default'} threads, {args.iters} "
          f"rounds; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        from shared.tools.jobs import write_json

        write_json(args.json, {"runtime": RUNTIMES[args.runtime], "arch": args.arch, "size": args.size,
                               "iters": args.iters, "threads": args.threads, "config": config, "sweep": args.sweep,
                               "loadavg": load, "command": "python -m shared.tools.adapters.openvino_profile "
                               + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
                               "profile": found})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
