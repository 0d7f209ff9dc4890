"""The one interface between the tools and a framework: ``Adapter``, kept by each module of
``shared.tools.adapters`` (torch, keras, flax, onnx), and the one meaning of each precision.

A precision means the same in ``check`` and in ``bench``, in every framework:

- ``fp32``: float32 arithmetic; on a GPU, TF32 off for convolutions *and* matmuls (torch
  ``cudnn.allow_tf32`` and ``cuda.matmul.allow_tf32`` False, JAX default precision "highest",
  TensorFlow ``enable_tensor_float_32_execution(False)``).
- ``tf32``: float32 storage, TF32 tensor cores for convolutions and matmuls (the same three
  switches on, JAX default precision "default"). A GPU mode: on a CPU it is fp32.
- ``bf16``: convolutions and matmuls in bfloat16 (torch autocast, Keras ``mixed_bfloat16``, a
  Flax compute dtype of bfloat16); whatever still runs in float32 does so with TF32 off.

``tf32(precision)`` is that rule; each adapter's ``setup_precision`` applies it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
from typing import ContextManager, Mapping, Protocol, runtime_checkable

import numpy as np

from shared.spec import ResNetSpec
from shared.tools.bench_timing import Step
from shared.tools.jobs import Job

PRECISIONS = ("fp32", "tf32", "bf16")
NAMES = ("torch", "keras", "flax", "onnx")
# Targets only when asked for (not in the default runs): the spec's ONNX model quantized to int8
# (run by onnxruntime, and the same QDQ model by OpenVINO), and the spec's ONNX model on OpenVINO.
QUANTIZED = ("onnx-int8", "openvino-int8")
RUNTIMES = ("openvino",)
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
# What each adapter needs installed, by import name (a Keras backend needs itself).
REQUIRES = {"torch": ("torch",), "keras": ("keras",), "flax": ("jax", "flax", "optax"), "onnx": ("onnx", "onnxruntime"),
            "onnx-int8": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino"),
            "openvino-int8": ("onnx", "onnxruntime", "openvino")}
# The running-variance rule each framework's BatchNorm update uses (reference.VARIANCES).
VARIANCE = {"torch": "unbiased", "keras": "biased", "flax": "biased"}


def installed(*names: str) -> bool:
    """Whether every name is installed: a framework of ``REQUIRES`` (all it needs), else a module
    by its import name (a Keras backend, torchvision, matplotlib). The one such test of the tools."""
    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a dotted name whose parent is missing
            return False

    return all(found(m) for name in names for m in REQUIRES.get(name, (name,)))


def tf32(precision: str) -> bool:
    """Whether convolutions and matmuls that take float32 may use TF32 tensor cores."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision == "tf32"


@runtime_checkable
class Adapter(Protocol):
    """What a framework offers the tools (a module of ``shared.tools.adapters``)."""

    NAME: str  # "torch", "keras", "flax", "onnx"

    def versions(self) -> dict[str, str]:
        """The packages this run used, and the device."""

    def setup_precision(self, precision: str, device: str) -> ContextManager[dict]:
        """Apply ``precision`` (the module rule above) on ``device`` ("cpu" or "gpu") while the
        context is open; yield the settings in effect; restore the framework's on exit."""

    def run_check(self, spec: ResNetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray, *,
                  labels: np.ndarray | None = None, device: str = "cpu", precision: str = "fp32",
                  mode: str = "eval", trace: bool = False) -> dict[str, np.ndarray]:
        """Build the model, load ``weights``, run ``images`` (NHWC); named float32 arrays:
        ``logits``; ``trace/<block>`` with ``trace``; in train mode ``loss``, ``grad/<weight>``
        and ``stats/<bn>.mean|var`` (the running statistics after one update)."""

    def run_bench(self, job: Job, spec: ResNetSpec, weights: Mapping[str, np.ndarray]) -> Step:
        """Ours (``job.impl == "ours"``) or the framework's own ResNet, ready to time."""

    def inject(self, mutant: str) -> ContextManager[None]:
        """Swap in the framework code of a ``native`` mutant (``shared.mutants``) while models
        are built and run; ValueError where the framework has no such code."""


def load(name: str) -> Adapter:
    """The adapter module of framework ``name``, checked against ``Adapter`` (imports the framework)."""
    if name not in NAMES + QUANTIZED + RUNTIMES:
        raise ValueError(f"framework: expected one of {', '.join(NAMES + QUANTIZED + RUNTIMES)}, got {name!r}")
    module = importlib.import_module(f"shared.tools.adapters.{name.replace('-', '_')}")
    missing = conformance(module)
    if missing:
        raise TypeError(f"shared.tools.adapters.{name} does not keep the Adapter interface: {'; '.join(missing)}")
    return module


def conformance(module) -> list[str]:
    """What ``module`` lacks of ``Adapter``: missing members, or functions whose parameters differ."""
    problems = []
    for member, declared in vars(Adapter).items():
        if member.startswith("_") or not callable(declared):
            continue
        found = getattr(module, member, None)
        if not callable(found):
            problems.append(f"no {member}()")
            continue
        want = list(inspect.signature(declared).parameters)[1:]  # without self
        have = list(inspect.signature(found).parameters)
        if have != want:
            problems.append(f"{member}({', '.join(have)}), expected {member}({', '.join(want)})")
    if not isinstance(getattr(module, "NAME", None), str):
        problems.append("no NAME")
    return problems


@contextlib.contextmanager
def no_mutant(framework: str, mutant: str):
    """``inject`` of a framework with no framework code to break: only the unbroken port."""
    if mutant:
        raise ValueError(f"mutant {mutant}: {framework} has no framework code to swap")
    yield



def logits_of(out):
    """A port's logits out of whatever its forward returns, read the same way in every framework
    and mode: an array or tensor; an output object with ``.logits`` (Hugging Face's); a dict
    (its ``"logits"``, else its one value); a tuple or list (the first)."""
    out = getattr(out, "logits", out) if not isinstance(out, Mapping) else out
    if isinstance(out, Mapping):
        if "logits" in out:
            out = out["logits"]
        elif len(out) == 1:
            out = next(iter(out.values()))
        else:
            raise ValueError(f"PORT: its forward returns a dict with keys {sorted(out)[:6]}: expected 'logits' "
                             "or a single output")
    return out[0] if isinstance(out, (tuple, list)) else out
