"""``resnet-parity verify PORT``: judge someone else's ResNet, and name the convention it broke.

PORT is ``FILE.py:NAME`` or ``package.module:NAME``, optionally ``NAME(k=v, ...)`` with literal
keyword arguments: a class or function that returns the model (a ``torch.nn.Module``, a
``keras.Model``, a ``flax.nnx.Module``, a ``flax.linen.Module`` or ``(linen module, variables)``;
the framework is read off its class), or an ``.onnx`` file (run with onnxruntime, or OpenVINO with
``--runtime openvino``, from memory; BatchNorm folded into the convs or not). ``verify(model,
...)`` takes the model object itself. Then:

1. **Architecture.** The port's parameters and BatchNorm statistics, in its own order (torch:
   the state_dict's; Keras: the layer graph's, depth first; Flax: the order a traced forward calls
   the layers; ONNX: the graph's), are read off the model (their names are not needed) as
   torch-layout shapes, and the architecture is read off them (``shared.tools.infer``): any
   structure the spec expresses, presets first, each fitting spec judged in turn (several fit
   where they differ only in layers without weights: timm's resnet50c and resnet50d); the first
   that passes is the architecture; when none does, each is diagnosed, nearest first, and the
   first a mutant explains is reported (else the nearest). A port no structure reads is refused
   with one line naming its first array that none reads and what the nearest expects there.
2. **Weight mapping.** Every array of the port maps to one canonical weight, by position
   (``--json`` shows the mapping).
3. **Weights.** Seeded weights with calibrated BatchNorm (as ``check``) go into the port itself.
4. **Judge.** The port runs in its own framework and layout (eval mode, float32) and is judged
   against the float64 reference with ``check``'s fp32 rule: at most 4x the error of the
   reference's own float32 arithmetic on the same weights and images. ``--trace`` judges the
   stem's and every block's output the same way (read where the next weighted layer takes it)
   and names the first out of budget. ``--mode train`` (torch, Keras, Flax) judges one train
   step as ``check --mode train`` does: batch-statistics logits, running statistics (the
   framework's variance rule), gradients against ``shared.backprop``. ``--precision bf16``
   judges the port's bf16 path by ``check``'s emulated-bf16 oracle and budget: torch under CPU
   bf16 autocast, Keras built under the mixed_bfloat16 policy (``load_port`` sets it around the
   factory), Flax as built (``NAME(dtype="bfloat16")``); a Keras or Flax port whose convs or
   classifier compute in another dtype than the verdict's is refused, never judged.
5. **Diagnose.** When it fails, the float64 reference is run under every mutant of
   ``shared.mutants`` that can change the judged function, singly and in pairs; a variant
   the port computes within budget is named ("computes the spec with BatchNorm epsilon 1e-3 ...").
   When none fits, the trace names the first block out of budget.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import itertools
import sys
import traceback
from pathlib import Path

import numpy as np

from shared import interop, mutants, parity, reference
from shared.fold import fold_batchnorm
from shared.spec import ResNetSpec, is_statistic
from shared.tools import adapter, infer


class VerifyError(ValueError):
    """A port that cannot be judged (not found, not a ResNet the spec expresses, ...)."""


# ----------------------------------------------------------------------------- the port

def load_port(text: str, precision: str = "fp32"):
    """The model ``PORT`` names (module docstring); at bf16 built under Keras' mixed_bfloat16
    policy where the port's module has loaded Keras (``_keras_policy``)."""
    where, sep, call = text.rpartition(":")
    if not sep or not where or not call:
        raise VerifyError(f"PORT: expected FILE.py:NAME or package.module:NAME, got {text!r}")
    name, _, args = call.partition("(")
    kwargs = {}
    if args:
        try:
            node = ast.parse(f"f({args}", mode="eval").body
            if node.args:
                raise ValueError("positional arguments")
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except (SyntaxError, ValueError) as e:
            raise VerifyError(f"PORT: {call!r}: expected NAME(key=literal, ...) ({e})") from None
    if where.endswith(".py") and not Path(where).is_file():
        raise VerifyError(f"PORT: no such file {where}")
    try:
        module = _import(where)
    except Exception as e:  # noqa: BLE001 (whatever the user's module raises: one line)
        raise VerifyError(f"PORT: {where} does not import ({type(e).__name__}: {_one_line(e)})") from None
    factory = getattr(module, name.strip(), None)
    if not callable(factory):
        raise VerifyError(f"PORT: {where} has no callable {name.strip()!r}")
    try:
        with _keras_policy(precision):
            return factory(**kwargs)
    except Exception as e:  # noqa: BLE001
        raise VerifyError(f"PORT: {call} fails ({type(e).__name__}: {_one_line(e)})") from None


@contextlib.contextmanager
def _keras_policy(precision: str):
    """At bf16, Keras' global dtype policy "mixed_bfloat16" while a port is built (a Keras
    layer's compute dtype is fixed when it is built), as ``check`` builds ours; restored after.
    Only where Keras is already loaded: nothing is imported for a torch or Flax port."""
    keras = sys.modules.get("keras") if precision == "bf16" else None
    if keras is None:
        yield
        return
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def _import(where: str):
    """A module by file path (imported under a name of its own) or by dotted name."""
    if not where.endswith(".py"):
        return importlib.import_module(where)
    path = Path(where)
    spec = importlib.util.spec_from_file_location(f"_resnet_parity_port_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and nnx look a class's module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def framework_of(model) -> str:
    """Which framework a model object belongs to, read off its class hierarchy (nothing imported)."""
    modules = {c.__module__.split(".")[0] for c in type(model).__mro__}
    # Keras first: on its torch backend a keras.Model is a torch.nn.Module too
    for framework, roots in (("keras", {"keras", "tf_keras"}), ("torch", {"torch"}), ("flax", {"flax"})):
        if modules & roots:
            return framework
    raise VerifyError(f"PORT: a {type(model).__module__}.{type(model).__name__} is no torch.nn.Module, "
                      "keras.Model or flax.nnx.Module")


# ----------------------------------------------------------------------------- the architecture

canonical_order = infer.canonical_order


def infer_specs(shapes: list[tuple[str, tuple[int, ...]]], arch: str | None = None,
                style: str | None = None) -> list[tuple[ResNetSpec, list]]:
    """Every spec with the port's arrays, with its order (``shared.tools.infer``); VerifyError
    naming the first array no structure reads."""
    try:
        return infer.infer_specs(shapes, arch, style)
    except infer.ArchitectureError as e:
        raise VerifyError(str(e)) from None


def _reference(spec: ResNetSpec) -> ResNetSpec:
    """The spec the reference runs: a port with BatchNorm folded computes the unfolded function."""
    return spec.replace(folded=False) if spec.folded else spec


# ----------------------------------------------------------------------------- judge and diagnose

@dataclasses.dataclass
class Verdict:
    spec: ResNetSpec
    framework: str
    mapping: dict[str, str]  # port name -> canonical key
    rel: float
    budget: float
    passed: bool
    diagnosis: list[dict] = dataclasses.field(default_factory=list)  # variants computed within budget
    trace: list[dict] = dataclasses.field(default_factory=list)  # per block: rel, budget (--trace)
    mode: str = "eval"
    detail: str = ""  # train mode: what check's row found out of budget
    precision: str = "fp32"  # bf16: judged against the emulated-bf16 reference

    def __str__(self) -> str:
        return report(self)

    @property
    def first_out_of_budget(self) -> dict | None:
        return next((t for t in self.trace if not t["rel"] <= t["budget"]), None)

    def to_json(self) -> dict:
        return {"arch": self.spec.arch, "structure": infer.describe(self.spec), "spec": self.spec.to_dict(),
                "style": self.spec.style, "framework": self.framework, "rel": self.rel,
                "budget": self.budget, "pass": self.passed, "mapping": self.mapping, "diagnosis": self.diagnosis,
                "trace": self.trace, "mode": self.mode, "detail": self.detail,
                "precision": self.precision}


def _fp32_rule(spec, weights, images) -> tuple[np.ndarray, float]:
    ref = reference.forward(spec, weights, images)
    peer = reference.forward(spec, weights, images, dtype=np.float32)
    return ref, parity.fp32_budget(parity.rel_error(peer, ref))


def eval_mutants(spec: ResNetSpec, precision: str = "fp32", size: int | None = None) -> list[str]:
    """The mutants that change an eval-mode forward of ``spec`` (at ``size``) and can be computed
    by the reference (a port that cannot run at all is no variant to name)."""
    return [name for name, m in mutants.CATALOGUE.items()
            if m.how in ("spec", "layers", "weights") and not m.fails_to_run and m.applies(spec, "eval", precision, size)]


def _variant(names, spec, weights):
    for name in names:
        mutated = mutants.mutate_spec(name, spec)
        weights = mutants.mutate_weights(name, spec, weights)
        spec = mutated
    return spec, weights


def _inputs(spec: ResNetSpec, seed: int, size: int, batch: int) -> tuple[dict, np.ndarray]:
    """The seeded calibrated weights and images a verdict on ``spec`` uses (as ``check``; a
    folded spec's: the unfolded one's, computed once for both)."""
    return _calibrated(_reference(spec), seed, size, batch)


@functools.lru_cache(maxsize=2)
def _calibrated(spec: ResNetSpec, seed: int, size: int, batch: int) -> tuple[dict, np.ndarray]:
    return reference.calibrated_weights(spec, seed=seed, size=size), reference.random_images(spec, batch, size, seed + 1)


@functools.lru_cache(maxsize=512)
def _judged(spec: ResNetSpec, combo: tuple[str, ...], seed: int, size: int, batch: int,
            precision: str = "fp32") -> tuple[np.ndarray, float]:
    """The reference logits of ``spec`` under the mutants ``combo`` and their budget, kept for
    the next port of the same spec (a pure function of its arguments): float64 and the fp32
    rule, or at bf16 check's emulated-bf16 logits and budget (``check.low_precision_oracle``)."""
    if not combo and precision == "fp32":
        ref, limit, _ = _traced(spec, seed, size, batch)
        return ref, limit
    weights, images = _inputs(spec, seed, size, batch)
    vspec, vweights = _variant(combo, spec, weights)
    if precision == "bf16":
        from shared.tools.check import low_precision_oracle

        return low_precision_oracle(vspec, vweights, images, "bf16")
    return _fp32_rule(vspec, vweights, images)


@functools.lru_cache(maxsize=8)
def _traced(spec: ResNetSpec, seed: int, size: int, batch: int) -> tuple[np.ndarray, float, dict]:
    """``_fp32_rule`` of the spec itself, with the float64 and float32 activations after the
    stem, every block and the head (``reference.forward``'s hook; check --trace's)."""
    spec = _reference(spec)
    weights, images = _inputs(spec, seed, size, batch)
    acts: dict = {"f64": {}, "f32": {}}
    ref = reference.forward(spec, weights, images, hook=acts["f64"].__setitem__)
    peer = reference.forward(spec, weights, images, hook=acts["f32"].__setitem__, dtype=np.float32)
    return ref, parity.fp32_budget(parity.rel_error(peer, ref)), acts


# What a file with BatchNorm folded cannot show: verify folds the seeded weights itself, with the
# spec's epsilon, so the port's own epsilon never enters.
FOLDED_AWAY = ("bn_epsilon",)


def diagnose(logits: np.ndarray, spec: ResNetSpec, seed: int, size: int, batch: int,
             precision: str = "fp32") -> list[dict]:
    """Every mutant (then pair of mutants) whose reference the port's logits match within that
    variant's own budget; singles first, pairs only when no single fits."""
    found, folded, spec = [], spec.folded, _reference(spec)
    names = [n for n in eval_mutants(spec, precision, size) if not (folded and n in FOLDED_AWAY)]
    for group in ([(n,) for n in names], list(itertools.combinations(names, 2))):
        for combo in group:
            try:
                ref, limit = _judged(spec, combo, seed, size, batch, precision)
            except (ValueError, KeyError):  # a pair that does not compose on this spec
                continue
            rel = parity.rel_error(logits, ref)
            if rel <= limit:
                found.append({"mutants": list(combo), "what": [mutants.CATALOGUE[n].what for n in combo],
                              "rel": rel, "budget": limit})
        if found:
            break
    return found


def _taps(spec: ResNetSpec, order: list) -> dict[str, int]:
    """Where each traced activation enters the port: the stem's and every block's output is the
    input of the next block's first weighted layer (the position of its first array in
    ``order``); the last block's is that of the head's first weighted layer (V1: the classifier,
    after the global pool)."""
    position = {key.rpartition(".")[0]: i for i, (key, _, _) in reversed(list(enumerate(order)))}
    blocks = spec.blocks()
    taps = {}
    for name, block in zip(["stem", *(b.name for b in blocks)], blocks):
        taps[name] = position[next(layer for layer in (*block.pre, *block.main) if layer.params).name]
    head = next((layer for layer in spec.head() if layer.params), None)
    if head is not None:
        taps[blocks[-1].name] = position[head.name]
    return taps


def trace(fw, model, spec: ResNetSpec, order: list, layout: str, seed: int, size: int, batch: int) -> list[dict]:
    """Each traced activation of the port against the float64 reference's, with check --trace's
    rule (the fp32 budget of the reference's own float32 activation there), in forward order."""
    _, images = _inputs(spec, seed, size, batch)
    refs = _traced(spec, seed, size, batch)[2]
    taps = _taps(spec, order)
    got = fw.port_inputs(model, images, layout, list(taps.values()))
    out = []
    for (name, _), port in zip(taps.items(), got):
        ref, peer = refs["f64"][name], refs["f32"][name]
        if port.ndim == 2 and ref.ndim == 4:  # the classifier's input: the global pool of the last block
            pool = np.max if spec.pooling == "max" else np.mean
            ref, peer = pool(ref, axis=(1, 2)), pool(peer, axis=(1, 2))
        limit = parity.fp32_budget(parity.rel_error(peer, ref))
        rel = parity.rel_error(port, ref) if port.shape == ref.shape else float("inf")
        out.append({"block": name, "rel": rel, "budget": limit, "shape": list(port.shape)})
    return out


# ----------------------------------------------------------------------------- training mode

@functools.lru_cache(maxsize=2)  # each holds every float64 gradient
def _train_oracle(spec: ResNetSpec, combo: tuple[str, ...], seed: int, size: int, batch: int):
    """check's train-mode oracle (``shared.backprop``, both variance rules, its budgets) of
    ``spec`` under the mutants ``combo``."""
    from shared.tools import check
    from shared.tools.jobs import random_labels

    weights, images = _inputs(spec, seed, size, batch)
    vspec, vweights = _variant(combo, spec, weights)
    return check._oracle(vspec, vweights, images, random_labels(spec, batch, seed), "train", "fp32", False)


def _train_judged(res: dict, spec, combo, framework: str, seed: int, size: int, batch: int):
    """check's row for one train step of the port (logits, running statistics with the
    framework's variance rule, gradients) against the variant ``combo``; ``variance_rule``: the
    other framework rule."""
    from types import SimpleNamespace

    from shared.tools import check

    rule = adapter.VARIANCE[framework]
    if "variance_rule" in combo:
        rule = next(r for r in set(adapter.VARIANCE.values()) if r != rule)
        combo = tuple(c for c in combo if c != "variance_rule")
    target = SimpleNamespace(label=framework, framework=next(f for f, r in adapter.VARIANCE.items() if r == rule))
    return check._judge(target, res, None, _train_oracle(spec, combo, seed, size, batch), "train", "fp32", False)


@functools.lru_cache(maxsize=256)
def _train_logits(spec: ResNetSpec, combo: tuple[str, ...], seed: int, size: int, batch: int,
                  ) -> tuple[np.ndarray, float]:
    weights, images = _inputs(spec, seed, size, batch)
    vspec, vweights = _variant(combo, spec, weights)
    ref = reference.forward_train(vspec, vweights, images)[0]
    peer = reference.forward_train(vspec, vweights, images, dtype=np.float32)[0]
    return ref, parity.fp32_budget(parity.rel_error(peer, ref))


def _train_logits_fit(logits, spec, combo, seed, size, batch) -> bool:
    """Whether the port's train-mode logits are those of the mutants ``combo`` by check's fp32
    rule (the forward alone: a variant whose logits already differ needs no backward pass)."""
    try:
        ref, limit = _train_logits(spec, combo, seed, size, batch)
    except (ValueError, KeyError):
        return False
    return parity.rel_error(logits, ref) <= limit


def train_mutants(spec: ResNetSpec, size: int | None = None) -> list[str]:
    """The mutants that change a train step of ``spec`` and that the reference can compute; the
    statistics' rule first (judged against the spec's own oracle, while it is still cached)."""
    return sorted((name for name, m in mutants.CATALOGUE.items()
                   if m.how in ("spec", "layers", "weights", "stats") and not m.fails_to_run
                   and m.applies(spec, "train", "fp32", size)),
                  key=lambda name: mutants.CATALOGUE[name].how != "stats")


def _train_row(fw, model, spec, order, layout, framework, seed, size, batch):
    """The port's train step as check's result dict, and check's row on it."""
    from shared.tools.jobs import random_labels

    _, images = _inputs(spec, seed, size, batch)
    logits, loss, arrays = fw.port_train(model, images, random_labels(spec, batch, seed), layout)
    _check_logits(logits, (batch, spec.num_classes), fw.port_arrays(model))
    res = {"logits": np.array(logits), "loss": np.array(loss)}
    for (key, _, _), value in zip(order, arrays, strict=True):  # copies: the next candidate trains the same port
        res[f"{'stats' if is_statistic(key) else 'grad'}/{key}"] = np.array(interop.canonical_kernel(value))
    return res, _train_judged(res, spec, (), framework, seed, size, batch)


def train_diagnosis(res, row, spec, framework, seed, size, batch) -> list[dict]:
    """On a FAIL, the mutants (singles, then pairs when no single fits) whose train step the
    port's (``res``) computes within every budget."""
    logits, found = res["logits"], []
    names = train_mutants(spec, size) if row.status != "pass" else []
    for group in ([(n,) for n in names], list(itertools.combinations(names, 2))):
        for combo in group:
            if not _train_logits_fit(logits, spec, combo, seed, size, batch):
                continue  # its batch-statistics logits already differ: no backward pass needed
            try:
                variant = _train_judged(res, spec, combo, framework, seed, size, batch)
            except (ValueError, KeyError):  # a pair that does not compose on this spec
                continue
            if variant.status == "pass":
                found.append({"mutants": list(combo), "what": [mutants.CATALOGUE[n].what for n in combo],
                              "rel": variant.rel, "budget": variant.budget})
        if found:
            break
    return found


def _check_logits(logits: np.ndarray, expected: tuple[int, ...], shapes: list) -> None:
    if logits.shape != expected:
        raise VerifyError(f"PORT: gives logits of shape {tuple(logits.shape)}; its classifier {shapes[-1][0]} "
                          f"{shapes[-1][1]} has {expected[-1]} classes: expected {expected}")


LAYOUTS = {"torch": "NCHW", "keras": "NHWC", "flax": "NHWC", "onnx": "NCHW", "openvino": "NCHW"}  # each one's own
RUNTIMES = {"onnxruntime": "onnx", "openvino": "openvino"}  # what runs an ONNX file: its adapter
# How a Keras or Flax port computes in a precision (its compute dtype is fixed when it is built).
BUILT_IN = {
    "keras": {"bf16": "verify builds a PORT under Keras' mixed_bfloat16 policy: pass it as PORT, not as a model "
                      "built before (or build it under keras.config.set_dtype_policy('mixed_bfloat16'))",
              "fp32": "it was built under a mixed policy: build it under keras.config.set_dtype_policy('float32'), "
                      "or judge it with --precision bf16"},
    "flax": {"bf16": "a Flax port computes in the dtype its constructor gives its layers: build it with "
                     "dtype=bfloat16, e.g. PORT 'my_resnet.py:ResNet50(dtype=\"bfloat16\")'",
             "fp32": "judge it with --precision bf16, or build it with float32 layers"},
}


def verify(port, *, arch: str | None = None, style: str | None = None, layout: str | None = None,
           size: int = 64, batch: int = 2, seed: int = 0, trace_blocks: bool = False, mode: str = "eval",
           precision: str = "fp32", runtime: str = "onnxruntime") -> Verdict:
    """The verdict on ``port``: a PORT string (module docstring), or the model object itself (a
    ``torch.nn.Module``, ``keras.Model``, ``flax.nnx.Module``, ``flax.linen.Module`` or
    ``(linen module, variables)``). ``verdict.passed``, ``verdict.diagnosis``, ``str(verdict)``
    (the command's report). A port that cannot be judged raises ``VerifyError`` with one line
    naming what verify met; nothing else escapes. ``runtime``: what runs an ``.onnx`` file,
    onnxruntime or OpenVINO (an OpenVINO IR ``.xml`` always runs on OpenVINO)."""
    try:
        return _verify(port, arch=arch, style=style, layout=layout, size=size, batch=batch, seed=seed,
                       trace_blocks=trace_blocks, mode=mode, precision=precision, runtime=runtime)
    except VerifyError:
        raise
    except Exception as e:  # noqa: BLE001 (a construct of the port nobody foresaw: one line, never a traceback)
        frame = traceback.extract_tb(e.__traceback__)[-1]
        raise VerifyError(f"PORT: verify cannot read this port: {type(e).__name__}: {_one_line(e)} (at {frame.name}, "
                          f"{Path(frame.filename).name}:{frame.lineno})") from None


def _verify(port, *, arch, style, layout, size, batch, seed, trace_blocks, mode, precision, runtime) -> Verdict:
    if trace_blocks and mode == "train":
        raise VerifyError("--trace compares eval-mode activations block by block; not with --mode train")
    if precision == "bf16" and (trace_blocks or mode == "train"):
        raise VerifyError("--precision bf16: judges eval-mode logits only (no --trace, no --mode train)")
    if runtime not in RUNTIMES:
        raise VerifyError(f"--runtime: expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if isinstance(port, str) and port.endswith((".onnx", ".xml")):
        framework, model = RUNTIMES["openvino" if port.endswith(".xml") else runtime], None
    else:
        model = port if not isinstance(port, str) else load_port(port, precision)
        # a PORT may return (module, variables): Flax linen's
        framework = framework_of(model[0] if isinstance(model, tuple) and len(model) == 2 else model)
    fw = adapter.load(framework)
    if model is not None and hasattr(fw, "port_wrap"):
        try:
            model = fw.port_wrap(model, size)
        except (ValueError, TypeError) as e:
            raise VerifyError(f"PORT: {_one_line(e)}") from None
    if mode == "train" and not hasattr(fw, "port_train"):
        raise VerifyError("--mode train: verify trains torch, Keras and Flax ports; an ONNX file only infers")
    if precision == "bf16" and framework == "onnx":
        raise VerifyError("--precision bf16: torch, Keras, Flax ports and OpenVINO (--runtime openvino); onnxruntime "
                          "runs an ONNX file as it is (float32 here)")
    try:
        model = fw.port_open(port) if model is None else model
        shapes = fw.port_arrays(model)
    except ValueError as e:
        raise VerifyError(str(e)) from None
    off = fw.port_off_dtype(model, precision) if hasattr(fw, "port_off_dtype") else None
    if off:
        raise VerifyError(f"--precision {precision}: the port's layer {off} does not compute in "
                          f"{'bfloat16' if precision == 'bf16' else 'float32'}; {BUILT_IN[framework][precision]}")
    layout = layout or LAYOUTS[framework]
    judged = []
    for spec, order in infer_specs(shapes, arch, style):  # the first that passes, else the nearest
        judged.append((*_judge(fw, model, framework, shapes, spec, order, layout, size, batch, seed, mode, precision),
                       order))
        if judged[-1][0].passed:
            break
    if judged[-1][0].passed:
        verdict, logits, order = judged[-1]
    else:  # the nearest preset a mutant explains, else the nearest (``logits``: train mode's result and row)
        for verdict, logits, order in sorted(judged, key=lambda j: j[0].rel):
            verdict.diagnosis = (train_diagnosis(*logits, verdict.spec, framework, seed, size, batch)
                                 if mode == "train" else diagnose(logits, verdict.spec, seed, size, batch, precision))
            if verdict.diagnosis:
                break
        else:
            verdict, logits, order = min(judged, key=lambda j: j[0].rel)
    if mode == "train":
        return verdict
    spec = verdict.spec
    if verdict is not judged[-1][0]:  # the chosen preset's weights back into the port, for the trace
        _load(fw, model, spec, order, seed, size, batch)
    # no variant fits: where it diverges (the trace's budgets are fp32's)
    if trace_blocks or not (verdict.passed or verdict.diagnosis or precision != "fp32"):
        verdict.trace = trace(fw, model, spec, order, layout, seed, size, batch)
    return verdict


def _load(fw, model, spec: ResNetSpec, order: list, seed: int, size: int, batch: int) -> None:
    """The seeded, calibrated weights of ``spec`` into the port, by ``order``."""
    weights = _inputs(spec, seed, size, batch)[0]
    if spec.folded:  # the seeded weights folded as the port holds them
        weights = fold_batchnorm(_reference(spec), weights)[1]
    state = interop.to_torchvision(spec, weights)
    fw.port_load(model, [state[tv] for _, tv, _ in order])


def _judge(fw, model, framework, shapes, spec, order, layout, size, batch, seed, mode, precision):
    """The port with ``spec``'s seeded weights, judged as ``spec`` (no diagnosis yet), and its
    logits (train mode: its train step's result and check's row on it)."""
    if spec.folded and (mode == "train" or precision != "fp32"):
        raise VerifyError(f"PORT: its BatchNorms are folded into its convs ({order[1][1]} {order[1][2]} is a bias): "
                          f"an inference-only network, judged in eval mode at fp32 only, not {mode} {precision}")
    _load(fw, model, spec, order, seed, size, batch)
    mapping = {name: key for (name, _), (key, _, _) in zip(shapes, order)}
    try:
        if mode == "train":
            res, row = _train_row(fw, model, spec, order, layout, framework, seed, size, batch)
        else:
            logits = fw.port_run(model, _inputs(spec, seed, size, batch)[1], layout,
                                 *(("bf16",) if precision == "bf16" else ()))
    except VerifyError:
        raise
    except Exception as e:  # noqa: BLE001 (any error of the port's own code: its framework's words, one line)
        raise VerifyError(f"PORT: its forward fails on a {batch}x{size}x{size}x{spec.image_channels} input "
                          f"({type(e).__name__}: {_one_line(e)})") from None
    if mode == "train":
        return Verdict(spec, framework, mapping, row.rel, row.budget, row.status == "pass", mode="train",
                       detail=row.detail), (res, row)
    ref, limit = _judged(spec, (), seed, size, batch, precision)
    _check_logits(logits, ref.shape, shapes)
    if precision == "bf16":
        from shared.tools.check import LOW_PRECISION_CAP

        if limit >= LOW_PRECISION_CAP:
            raise VerifyError(f"--precision bf16: the budget {limit:.2e} is not below {LOW_PRECISION_CAP} here: it "
                              "could not tell a broken port from a correct one (try a larger --size or --batch)")
    rel = parity.rel_error(logits, ref)
    return Verdict(spec, framework, mapping, rel, limit, rel <= limit, precision=precision), logits


def report(verdict: Verdict) -> str:
    spec = verdict.spec
    train = " train-mode" if verdict.mode == "train" else ""
    detail = f" ({verdict.detail})" if verdict.detail else ""
    oracle = "the emulated-bf16 reference" if verdict.precision == "bf16" else "the float64 reference"
    folded = ", BatchNorm folded" if spec.folded else ""
    head = (f"{verdict.framework} port of {infer.describe(spec)} ({spec.style} style{folded}):{train} logits rel "
            f"{verdict.rel:.2e} against {oracle}, budget {verdict.budget:.2e}{detail}: ")
    if verdict.passed:
        line = head + "pass"
    elif not verdict.diagnosis:
        line = head + "FAIL; it computes no single or paired mutant of the spec"
    else:
        best = min(verdict.diagnosis, key=lambda d: d["rel"])
        line = head + (f"FAIL; it computes the spec with {' and '.join(best['what'])} (rel {best['rel']:.2e}): "
                       f"fix that convention ({', '.join(best['mutants'])} in shared.mutants)")
    if spec.folded and not verdict.passed:
        line += "\n(BatchNorm is folded into the convs: its epsilon cannot be seen in this file)"
    first = verdict.first_out_of_budget
    if first:
        line += (f"\nfirst block out of budget: {first['block']} (rel {first['rel']:.2e}, budget "
                 f"{first['budget']:.2e}, {len(verdict.trace)} traced)")
    elif verdict.trace:
        line += f"\nevery traced block within budget ({len(verdict.trace)} traced)"
    return line


def plot_trace(verdict: Verdict, path: str) -> None:
    """Each traced activation's error against its budget, stem to head, on a log scale, the
    first out of budget marked: where the port leaves the spec (matplotlib; written whole or
    not at all)."""
    from shared.tools.bench_report import check_plot_available

    check_plot_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.weights import atomic_path

    names = [t["block"] for t in verdict.trace]
    rel = [max(t["rel"], 1e-12) if np.isfinite(t["rel"]) else np.nan for t in verdict.trace]
    budget = [t["budget"] for t in verdict.trace]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 4.2))
    ax.semilogy(x, budget, "--", color="tab:gray", label="budget (4x the float32 reference's error)")
    ax.semilogy(x, rel, "o-", color="tab:blue", label="the port's error against the float64 reference")
    first = verdict.first_out_of_budget
    if first:
        i = names.index(first["block"])
        ax.semilogy([i], [rel[i]], "o", color="tab:red", markersize=10, label=f"first out of budget: {names[i]}")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("relative error (max |diff| / max |ref|)")
    ax.set_title(report(verdict).splitlines()[0][:110], fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def cli(args) -> int:
    from shared.tools.jobs import write_json

    if getattr(args, "plot", None):
        if not args.trace:
            raise VerifyError("--plot draws the trace: add --trace")
        from shared.tools.bench_report import PlotUnavailable, check_plot_available

        try:
            check_plot_available()
        except PlotUnavailable as e:
            raise VerifyError(str(e)) from None
    verdict = verify(args.port, arch=args.arch, style=args.style, layout=args.layout, size=args.size,
                     batch=args.batch, seed=args.seed, trace_blocks=args.trace, mode=args.mode, precision=args.precision,
                     runtime=args.runtime)
    print(report(verdict))
    if args.json:
        write_json(args.json, verdict.to_json())
    if getattr(args, "plot", None):
        plot_trace(verdict, args.plot)
    return 0 if verdict.passed else 1
