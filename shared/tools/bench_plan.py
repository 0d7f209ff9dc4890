"""What ``resnet-parity bench`` measures: pairs of (ours, the framework's own reference) per
target, mode and precision, and the single runs (one model, one process each) they need.

Each pair compares like with like: ours is built from the spec of the reference's own style
(torchvision v1.5 beside torchvision, Keras Applications v1 beside keras.applications), and
both sides run with the same settings. resnet_flax has no Flax reference that ships as a
package, so its reference is keras.applications on the jax backend: the same run as
keras[jax]'s reference, measured once when both are asked for. An architecture a framework
does not ship (torchvision has no V2, keras.applications no ResNet-18 or ResNeXt) runs without
a reference, in the style it exists in.

With ``bench --recipe NAME`` the train rows train a ``shared.recipe`` preset: ours by the
package's own ``optimizer(recipe, model)`` and ``train_step``, the reference by the framework's
own loop with its stock optimizer (torchvision's model and torch.optim, keras.applications' and
keras.optimizers; resnet_flax's model and a plain optax optimizer under ``nnx.jit``, Flax
shipping no model of its own).
"""

from __future__ import annotations

import dataclasses

from shared import spec as S
from shared.tools.adapter import KERAS_BACKENDS, NAMES as FRAMEWORKS, QUANTIZED, REQUIRES, RUNTIMES, installed

MODES = ("infer", "train")
# Targets beside onnx-int8 when named: torch's own int8 path, torch.ao's FX static quantization
# (x86) of torchvision's model (the adapter's "int8" impl), beside the same model in fp32.
PEERS = ("torch-int8",)
INT8 = QUANTIZED + PEERS


@dataclasses.dataclass(frozen=True)
class Run:
    """One model measured in one mode and precision, in a process of its own."""

    framework: str  # the adapter that drives it (shared.tools.adapters): "torch", "keras", "flax", "onnx"
    impl: str  # "ours", "reference" or "int8" (torch.ao's int8 of the reference)
    backend: str  # Keras backend; "" for the others
    mode: str
    precision: str
    style: str  # spec style: the reference's own
    fold: bool = False  # ours built from the BatchNorm-folded spec (shared.fold)
    peer: str = "torchvision"  # whose model a torch reference is: "torchvision" or "timm"
    recipe: str = ""  # train: a shared.recipe preset (ours: its optimizer and train_step; reference: stock)

    @property
    def label(self) -> str:
        name = {("torch", "ours"): "resnet_torch", ("torch", "reference"): self.peer,
                ("keras", "ours"): "resnet_keras", ("keras", "reference"): "keras.applications",
                ("flax", "ours"): "resnet_flax", ("flax", "reference"): "resnet_flax+optax",
                ("onnx", "ours"): "onnxruntime",
                ("onnx-int8", "ours"): "onnxruntime-int8", ("torch", "int8"): "torch.ao-int8",
                ("openvino", "ours"): "openvino", ("openvino-int8", "ours"): "openvino-int8"}[(self.framework, self.impl)]
        name += "+fold" if self.fold else ""
        return f"{name}[{self.backend}]" if self.backend else name

    @property
    def requires(self) -> tuple[str, ...]:
        """Import names this run needs."""
        needs = REQUIRES[self.framework]
        if self.framework == "torch" and self.impl != "ours":
            needs += ("torchvision", "timm") if self.peer == "timm" else ("torchvision",)
        if self.backend:
            needs += (self.backend,)
        return needs

    def missing(self) -> list[str]:
        return [m for m in self.requires if not installed(m)]


@dataclasses.dataclass
class Pair:
    """One row of the table: ours beside its reference (None: no reference to run)."""

    target: str  # "torch", "keras[jax]", "flax"
    mode: str
    precision: str
    ours: Run
    reference: Run | None
    skipped: str = ""  # why nothing runs ("not installed: ...", "tf32 is a GPU mode")

    def runs(self) -> list[Run]:
        if self.skipped:
            return []
        return [r for r in (self.ours, self.reference) if r is not None and not r.missing()]


def _style(preset: S.Preset, wanted: str) -> str:
    return wanted if wanted in preset.styles else preset.styles[0]


def _timm(preset: S.Preset) -> bool:
    """A preset of timm's ``resnet.py`` family: timm's model is its torch reference."""
    return preset.peer.startswith("timm.") and preset.fields.get("block") != "preact"


def _pair(target: str, mode: str, precision: str, preset: S.Preset, recipe: str = "") -> Pair:
    """Ours beside the framework's own model of this architecture, where the framework has one
    (torchvision: every torchvision preset; timm: its ``resnet.py`` family; keras.applications:
    ResNet50/101/152 and V2). A train pair with ``recipe``: both sides train it, and resnet_flax's
    reference is its own model in Flax's stock loop."""
    framework, _, backend = target.partition("[")
    backend = backend.rstrip("]")
    if framework in ("onnx", "onnx-int8", "torch", "torch-int8", *RUNTIMES, "openvino-int8"):  # beside torchvision (or timm)
        style = _style(preset, "torchvision")
        ours = Run(*(("torch", "int8") if framework in PEERS else (framework, "ours")), "", mode, precision, style)
        timm = _timm(preset) and framework not in PEERS
        has_ref = (preset.torchvision or timm) and style == "torchvision"
        ref = Run("torch", "reference", "", mode, precision, style, peer="timm" if timm else "torchvision") \
            if has_ref else None
    else:
        style = _style(preset, "keras")
        ours = Run(framework, "ours", backend if framework == "keras" else "", mode, precision, style)
        has_ref = preset.keras_applications and style == "keras"
        ref = Run("keras", "reference", backend or "jax", mode, precision, style) if has_ref else None
    if recipe and mode == "train":
        if framework == "flax":
            ref = Run("flax", "reference", "", mode, precision, style)
        ours, ref = (dataclasses.replace(r, recipe=recipe) if r else None for r in (ours, ref))
    return Pair(target, mode, precision, ours, ref)


def plan(frameworks=FRAMEWORKS, keras_backends=KERAS_BACKENDS, modes=MODES, precisions=("fp32",),
         device: str = "cpu", fold: bool = False, arch: str = "resnet50", recipe: str = "",
         compile: bool = False) -> list[Pair]:
    """Every row, in table order; rows that cannot run say why in ``skipped``. ``fold`` adds,
    after each target's row, one whose ours runs the BatchNorm-folded spec (same reference).
    ``recipe``: the train rows train this ``shared.recipe`` preset."""
    targets = []
    for fw in frameworks:
        targets += [f"keras[{b}]" for b in keras_backends] if fw == "keras" else [fw]
    pairs = []
    for target in targets:
        for mode in modes:
            for precision in precisions:
                for folded in (False, True) if fold and target not in PEERS else (False,):
                    pair = _pair(target, mode, precision, S.PRESETS[arch], recipe)
                    if folded:
                        pair = dataclasses.replace(pair, target=f"{target}+fold",
                                                   ours=dataclasses.replace(pair.ours, fold=True))
                    missing, int8 = pair.ours.missing(), target in INT8
                    if missing:
                        pair.skipped = f"not installed: {', '.join(missing)}"
                    elif precision == "tf32" and device == "cpu":
                        pair.skipped = "skipped: tf32 is a GPU mode"
                    elif mode == "train" and (folded or int8 or pair.ours.framework in ("onnx", *RUNTIMES)):
                        pair.skipped = "skipped: inference only"
                    elif device == "gpu" and (int8 or pair.ours.framework in ("onnx", *RUNTIMES)):
                        pair.skipped = f"skipped: {'torch.ao x86' if target in PEERS else pair.ours.label} runs on the CPU here"
                    elif pair.ours.recipe and compile and pair.ours.framework == "keras":
                        pair.skipped = ("skipped: resnet_keras.train_step compiles with Keras' default jit_compile "
                                        "(--compile would change the reference alone)")
                    elif target in PEERS and pair.reference is None:
                        pair.skipped = f"skipped: torchvision ships no {arch}"
                    elif device == "cpu" and (why := not_supported(target if int8 else pair.ours.framework, precision)):
                        pair.skipped = f"not supported here: {why}"
                    pairs.append(pair)
    return pairs


def unique_runs(pairs: list[Pair]) -> list[Run]:
    """The runs the pairs need, each once, in table order."""
    return list(dict.fromkeys(r for p in pairs for r in p.runs()))


# What a CPU needs for the fast low-precision paths, by /proc/cpuinfo flag: without one, the row
# says "not supported here" (a framework would run emulated or saturating code, never the path
# the row names).
VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16 = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def not_supported(framework: str, precision: str, flags: frozenset[str] | None = None) -> str:
    """Why this CPU cannot run ``framework`` at ``precision`` as the row means it ("": it can)."""
    flags = cpu_flags() if flags is None else flags
    if framework in INT8 and precision != "fp32":
        runtime = {"torch-int8": "torch.ao", "openvino-int8": "OpenVINO"}.get(framework, "onnxruntime")
        return f"int8 {precision}: the arithmetic around {runtime}'s int8 ops is fp32 only"
    if framework == "onnx" and precision != "fp32":
        return (f"onnxruntime {precision}: ONNX Conv takes no bfloat16 (opset 17 types: float16, float, double) and "
                "onnxruntime's CPU provider has no bf16 conv kernel")
    if framework in INT8 and not flags & set(VNNI):
        return f"no int8 dot-product instructions on this CPU (none of {', '.join(VNNI)})"
    if precision == "bf16" and not flags & set(BF16):
        return f"no bf16 instructions on this CPU (none of {', '.join(BF16)}): bf16 would run emulated"
    return ""
