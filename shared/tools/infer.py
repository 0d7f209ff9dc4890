"""The architecture of a port, read off its arrays: which ``ResNetSpec`` has exactly these shapes.

``verify`` knows a port only by its parameters and BatchNorm statistics, in the port's own
order, as torch-layout shapes (``[(name, shape), ...]``; names are never needed). This module
finds every spec that has exactly those arrays, for any structure the spec expresses, not only
the presets: depths, stem width and kernel, the number of stages, the bottleneck's inner width
(groups and width per group), the expansion, SE's width, the shortcut conv's kernel, the input
channels and the classes are all read off the shapes.

How: each distinct structure of the presets, in each style it exists in, is a *template* (what
kind of block, which stem, which shortcut, which attention, which conventions decide where a
bias is). A template is fitted to the port by reading the numbers where the template's own
differ from the port's:

1. the stem: each stem conv's kernel and width from the port's (a single 7x7 conv sets the
   width, as torchvision's ``width`` does);
2. the first block: the inner width (width per group), the groups (the 3x3 conv's input
   channels per group), the expansion (the last conv's output), SE's ratio, the shortcut
   kernel, each from the first array the template gets wrong;
3. the depths: stage by stage, as many blocks of the stage's shape as the port has, then the
   next stage, until the head fits the rest.

The fitted spec must then give exactly the port's shapes, array by array (``canonical_order``),
or the template is dropped. A port no template fits is refused at the first array the nearest
template could not read, naming what it expects there. Presets stay presets: a template's own
numbers are tried first, and a fitted spec with a preset's structure is that preset
(``ResNetSpec.arch``).

BatchNorm folded into the convs (an ONNX file from torch's default exporter) is a spec too
(``folded=True``: every conv biased, no BatchNorm after a conv); its templates are tried when
no unfolded one fits.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from shared import interop
from shared.spec import PRESETS, Conv, ResNetSpec, preset

Shapes = list[tuple[str, tuple[int, ...]]]
Entry = tuple[str, str, tuple[int, ...]]  # canonical key, torchvision key, torch-layout shape
SE_RATIOS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1 / 32)  # timm's seresnet*, ..., resnetrs*: 1/4
MAX_STAGES = 8


class ArchitectureError(ValueError):
    """No spec has the port's arrays."""


def _entries(layers) -> list[Entry]:
    out = []
    for layer in layers:
        module = interop.torchvision_module(layer.name) if layer.params else ""
        for param, shape in layer.params.items():
            if param == "kernel":  # HWIO -> OIHW, (k,) -> (1, 1, k), (in, out) -> (out, in)
                shape = interop.torch_kernel(layer, np.broadcast_to(np.float32(0), shape)).shape
            out.append((f"{layer.name}.{param}", f"{module}.{interop.torchvision_param(layer, param)}", tuple(shape)))
    return out


def _orders(block) -> list[list[Entry]]:
    """One block's weights in torchvision's order and, where it has a projection shortcut, with
    the shortcut first (Keras lists it first)."""
    pre, post = _entries(block.pre), _entries(block.out)
    main, shortcut = _entries(block.main) + _entries(block.attention), _entries(block.shortcut)
    return [pre + main + shortcut + post] + ([pre + shortcut + main + post] if shortcut else [])


def _block_entries(block, shapes: Shapes | None, at: int) -> list[Entry]:
    """One block's weights in the order of ``_orders`` the port's arrays from ``at`` read furthest."""
    orders = _orders(block)
    return max(orders, key=lambda entries: _matched(shapes, at, entries)) if shapes else orders[0]


def canonical_order(spec: ResNetSpec, shapes: Shapes | None = None) -> list[Entry]:
    """(canonical key, torchvision key, torch-layout shape) of every weight of ``spec``, in
    torchvision's order (the spec's layer order; no array is made); with the port's ``shapes``,
    a block's projection shortcut first where the port lists it first."""
    out = _entries(spec.stem())
    for block in spec.blocks():
        out += _block_entries(block, shapes, len(out))
    return out + _entries(spec.head())


def same_shape(got: tuple, expected: tuple) -> bool:
    """Whether a port's array of shape ``got`` is the canonical weight of torch-layout shape
    ``expected``: equal, or ECA's channel conv kernel (torch's Conv1d ``(1, 1, k)``) held as
    ``(k,)`` or as Keras' and Flax's Conv1D ``(k, 1, 1)``."""
    if got == expected:
        return True
    return len(expected) == 3 and expected[:2] == (1, 1) and got in ((expected[2],), (expected[2], 1, 1))


def _matched(shapes: Shapes, at: int, entries: list[Entry]) -> int:
    """How many of ``entries`` the port's arrays from ``at`` have."""
    n = 0
    while n < len(entries) and at + n < len(shapes) and same_shape(shapes[at + n][1], entries[n][2]):
        n += 1
    return n


@dataclasses.dataclass
class _Fit:
    """How far one template read the port: the spec so far, the first array it could not read
    (``at``), and what it expected there."""

    spec: ResNetSpec
    at: int
    expected: Entry | None  # None: the template ended before the port


def templates(arch: str | None = None, style: str | None = None, folded: bool = False) -> list[ResNetSpec]:
    """One spec per distinct preset structure and style (the presets' order), ``arch`` and
    ``style`` restricting them."""
    out = []
    for name, p in PRESETS.items():
        if arch and name != arch:
            continue
        for st in ([style] if style else p.styles):
            if st in p.styles:
                spec = preset(name, st).replace(folded=folded)
                if spec not in out:
                    out.append(spec)
    return out


# ----------------------------------------------------------------------------- the numbers

def _stem(spec: ResNetSpec, shapes: Shapes) -> _Fit:
    """The stem's convs read off the port: where the template's kernel or width differ, the
    port's (at the template's stride); the rest of the stem follows the template."""
    for _ in range(8):
        entries = _entries(spec.stem())
        n = _matched(shapes, 0, entries)
        if n == len(entries):
            return _Fit(spec, n, None)
        key, _, expected = entries[n]
        got = shapes[n][1] if n < len(shapes) else None
        convs = [layer.name for layer in spec.stem() if isinstance(layer, Conv) and layer.name != "pool1_conv"]
        layer = key.rpartition(".")[0]
        if got is None or len(got) != 4 or layer not in convs or key.endswith(".bias") or got[1:2] != expected[1:2]:
            return _Fit(spec, n, entries[n])
        i = convs.index(layer)
        k, width, stride = got[2], got[0], spec._stem_convs[i][2]
        stem = list(spec._stem_convs)
        stem[i] = (k, width, stride)
        changed = spec.replace(stem_convs=tuple(stem))
        if len(convs) == 1 and k == 7 and stride == 2:  # torchvision's stem: its width is the blocks'
            try:
                changed = spec.replace(stem_convs=None, width=width)
            except ValueError:  # no spec with this width (its width per group gives no channels)
                pass
        if changed == spec:
            return _Fit(spec, n, entries[n])
        spec = changed
    return _Fit(spec, n, entries[n])


def _first_block_candidates(spec: ResNetSpec, key: str, expected: tuple, got: tuple) -> list[ResNetSpec]:
    """Specs that would read the port's ``got`` where ``spec`` expects ``expected`` at canonical
    weight ``key`` of the first block (each a guess the next comparison accepts or not)."""
    layer = key.rpartition(".")[0]
    out = []

    def keep(**fields):
        try:
            out.append(spec.replace(**fields))
        except ValueError:  # not a spec (e.g. a width per group that gives no channels)
            pass

    if len(got) != len(expected):
        return []
    if layer.endswith("_se_1_conv") and got[1] == expected[1]:
        for ratio in SE_RATIOS:
            if spec.replace(se_ratio=ratio)._se_width(got[1]) == got[0]:
                keep(se_ratio=ratio)
        return out
    if layer.endswith(("_0_conv", "_down_conv")) and got[:2] == expected[:2]:
        keep(shortcut_kernel=got[2])
        return out
    if len(got) != 4 or got[1] != expected[1] and not layer.endswith("_2_conv"):
        return out
    o, i, k = got[0], got[1], got[2]
    if spec.block == "basic":
        if layer.endswith("_1_conv"):
            keep(width=o)
        elif layer.endswith("_2_conv") and o % spec.width == 0:
            keep(expansion=o // spec.width)
        return out
    if layer.endswith("_1_conv") and k == 1:  # the inner width: the width per group, else the width
        if o % spec.groups == 0:  # every width per group torchvision's int() takes to this inner width
            lo, hi = -(-64 * (o // spec.groups) // spec.width), -(-64 * (o // spec.groups + 1) // spec.width)
            for wpg in range(lo, min(hi, lo + 32)):
                keep(width_per_group=wpg)
        if (64 * o) % (spec.width_per_group * spec.groups) == 0:
            keep(width=64 * o // (spec.width_per_group * spec.groups))
        if spec.groups > 1 and (64 * o) % spec.width == 0:  # the groups are read at the 3x3 conv
            keep(groups=1, width_per_group=64 * o // spec.width)
    elif layer.endswith("_2_conv") and o == expected[0] and i and o % i == 0:  # the groups
        groups = o // i
        lo, hi = -(-64 * i // spec.width), -(-64 * (i + 1) // spec.width)
        for wpg in range(lo, min(hi, lo + 32)):
            keep(groups=groups, width_per_group=wpg)
    elif layer.endswith("_3_conv"):  # the output: the expansion, else the width (the inner width kept)
        inner = spec._inner_width(0)
        if o % spec.width == 0:
            keep(expansion=o // spec.width)
        for expansion in dict.fromkeys((spec.expansion, 4, 2, 1, 8)):
            width = o // expansion
            if o % expansion == 0 and (64 * inner) % (width * spec.groups) == 0:
                keep(width=width, expansion=expansion, width_per_group=64 * inner // (width * spec.groups))
    return out


def _first_blocks(spec: ResNetSpec, shapes: Shapes, at: int) -> tuple[list[ResNetSpec], _Fit]:
    """Every reading of the first block's numbers (depth-first over the guesses
    ``_first_block_candidates`` offers where a reading stops short; torchvision's int() on the
    inner width lets several agree on one block), and the furthest reading."""
    best, found = None, []
    stack, seen = [spec.replace(depths=(1,))], set()
    while stack and len(seen) < 512:
        candidate = stack.pop()
        if candidate in seen:
            continue
        seen.add(candidate)
        for entries in _orders(candidate.blocks()[0]):
            n = _matched(shapes, at, entries)
            fit = _Fit(candidate, at + n, entries[n] if n < len(entries) else None)
            if best is None or fit.at > best.at:
                best = fit
            if n == len(entries):
                found.append(candidate)
                break
            if at + n < len(shapes):
                key, _, expected = entries[n]
                stack.extend(reversed(_first_block_candidates(candidate, key, expected, shapes[at + n][1])))
    return found, best


def _depths(spec: ResNetSpec, shapes: Shapes, at: int) -> _Fit:
    """Stage by stage, as many blocks of the stage's shape as the port lists, until the head
    fits the rest exactly."""
    depths: list[int] = []
    best = None
    for stage in range(MAX_STAGES):
        ladder = spec.replace(depths=(*depths, 2))
        first, rest = ladder.blocks()[-2:]
        entries = _block_entries(first, shapes, at)
        n = _matched(shapes, at, entries)
        if n < len(entries):
            fit = _Fit(spec.replace(depths=tuple(depths) or (1,)), at + n, entries[n])
            return fit if best is None or fit.at >= best.at else best
        at, count = at + n, 1
        while True:
            entries = _block_entries(rest, shapes, at)
            if _matched(shapes, at, entries) < len(entries):
                break
            at, count = at + len(entries), count + 1
        depths.append(count)
        done = spec.replace(depths=tuple(depths))
        head = _entries(done.head())
        n = _matched(shapes, at, head)
        if n == len(head) and at + n == len(shapes):
            return _Fit(done, at + n, None)
        best = _Fit(done, at + n, head[n] if n < len(head) else None)
    return best


def _fit(template: ResNetSpec, shapes: Shapes) -> _Fit:
    """The template fitted to the port (``at == len(shapes)`` and no ``expected``: it fits). An
    SE width that only a later stage tells apart (make_divisible rounds stage 1's alike) is
    read by refitting with each ratio where the first fit stops at an SE conv."""
    fit = _fit_numbers(template, shapes)
    if template.attention == "se" and fit.expected is not None and "_se_" in fit.expected[0]:
        for ratio in SE_RATIOS:
            other = _fit_numbers(template.replace(se_ratio=ratio), shapes)
            if other.at > fit.at or other.expected is None:
                fit = other
    return fit


def _fit_numbers(template: ResNetSpec, shapes: Shapes) -> _Fit:
    channels, classes = shapes[0][1][1], shapes[-1][1][0]
    try:
        spec = template.replace(image_channels=channels, num_classes=classes)
    except ValueError:
        return _Fit(template, 0, _entries(template.stem())[0])
    stem = _stem(spec, shapes)
    if stem.expected is not None:
        return stem
    # the stem as read, whatever width the blocks turn out to have
    readings, best = _first_blocks(stem.spec.replace(stem_convs=stem.spec._stem_convs), shapes, stem.at)
    for spec in readings:  # the first reading whose stages and head read the rest
        if spec.stem_convs == ((7, spec.width, 2),):
            spec = spec.replace(stem_convs=None)
        fit = _depths(spec, shapes, stem.at)
        if fit.expected is None and fit.at == len(shapes):
            order = canonical_order(fit.spec, shapes)
            n = _matched(shapes, 0, order)
            if n == len(order) == len(shapes):
                return fit
            fit = _Fit(fit.spec, n, order[n] if n < len(order) else None)  # the parts read apart disagree
        if fit.at > best.at:
            best = fit
    return best


def infer_specs(shapes: Shapes, arch: str | None = None, style: str | None = None) -> list[tuple[ResNetSpec, list]]:
    """Every spec whose weights, in torchvision's (or Keras' shortcut-first) order, have the
    port's shapes, each with that order (``canonical_order``): presets first, then structures
    no preset has, each in the order of the template it came from (presets that differ only in
    layers without weights all fit: the judge tells them apart). ``arch``: that preset only.
    None fits: ArchitectureError naming the first array the nearest template could not read."""
    if not shapes or len(shapes[0][1]) != 4:
        raise ArchitectureError("PORT: its first parameter is no conv kernel: not a ResNet")
    if arch and arch not in PRESETS:
        raise ArchitectureError(f"--arch: no preset {arch!r}; one of {', '.join(PRESETS)}")
    found, nearest = [], None
    for folded in (False, True):
        for template in templates(arch, style, folded):
            fit = _fit(template, shapes)
            if fit.expected is None and fit.at == len(shapes):
                if fit.spec not in [s for s, _ in found] and (arch is None or fit.spec.arch == arch):
                    found.append((fit.spec, canonical_order(fit.spec, shapes)))
            elif nearest is None or fit.at > nearest[0].at:
                nearest = (fit, template.arch)
        if found:
            return sorted(found, key=lambda f: f[0].arch is None)
    if nearest is None:
        raise ArchitectureError(f"--arch/--style: no preset {arch!r} in style {style!r}")
    return _refuse(*nearest, shapes)


def describe(spec: ResNetSpec) -> str:
    """A spec in a few words: its preset's name, else its structure's numbers."""
    if spec.arch:
        return spec.arch
    parts = [f"{spec.block} blocks", f"depths {'-'.join(map(str, spec.depths))}", f"width {spec.width}"]
    if spec.block != "basic" and (spec.groups, spec.width_per_group) != (1, 64):
        parts.append(f"{spec.groups}x{spec.width_per_group} groups")
    if spec.expansion != (1 if spec.block == "basic" else 4):
        parts.append(f"expansion {spec.expansion}")
    if spec.stem_convs is not None:
        parts.append("stem " + "-".join(f"{k}x{k}/{s}:{c}" for k, c, s in spec.stem_convs))
    for field in ("stem_pool", "shortcut", "attention", "anti_alias"):
        value, default = getattr(spec, field), {"stem_pool": "max", "shortcut": "conv"}.get(field)
        if value != default:
            parts.append(f"{field} {value}")
    return "a ResNet (" + ", ".join(parts) + ")"


def _refuse(nearest: _Fit, template: str, shapes: Shapes):
    spec, at = nearest.spec, nearest.at
    closest = f"the closest structure, {template}'s ({spec.style} style{', BatchNorm folded' if spec.folded else ''})"
    if at < len(shapes):
        expected = f"{nearest.expected[1]} {nearest.expected[2]}" if nearest.expected else "nothing more"
        raise ArchitectureError(f"PORT: parameter #{at} {shapes[at][0]} {shapes[at][1]} fits no ResNet the spec "
                                f"expresses; {closest}, expects {expected} there")
    raise ArchitectureError(f"PORT: ends after {len(shapes)} arrays; {closest}, goes on with "
                            f"{nearest.expected[1]} {nearest.expected[2]}")
