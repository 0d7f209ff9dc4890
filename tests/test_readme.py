"""The README and the docs pages as a reader meets them.

Every fenced Python block of the README, and of the docs pages that carry examples, runs in
order, one namespace per page, in a temporary folder, so an example can never drift from the
code. The two published checkpoints the examples name are served by a local mirror (generated
files of the same architecture, registered under the same names with their sha256): no test
reaches the internet. Keras runs them on the backend a reader gets by default (the whole
suite's pass); the per-backend reruns leave this test out.

The figures the README claims are checked against the JSON of the runs in ``docs/results/``
(never read from prose as a truth), and every relative link of the README and of ``docs/``
points at a file that exists."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from shared import hub, interop, keras_h5, mutants, spec as S, weights as W
from local_server import serving

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results"
PAGES = [ROOT / "docs" / name for name in ("usage.md", "formats.md", "fold-onnx.md")]  # the pages with examples
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
MIRRORED = {"torchvision/resnet50.IMAGENET1K_V2": "pth", "keras/resnet50.imagenet": "h5"}


def blocks(path: Path = README) -> list[str]:
    return BLOCK.findall(path.read_text())


def _published_like(name: str, fmt: str, folder: Path) -> Path:
    """A file of the architecture and format the name publishes, with seeded random weights."""
    path = folder / hub.entry(name).filename
    if fmt == "pth":
        import torch

        spec = S.resnet50()
        state = interop.to_torchvision(spec, W.init(spec, seed=1))
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    else:
        spec = S.resnet50("keras")
        keras_h5.to_keras_applications_h5(spec, W.init(spec, seed=2), path)
    return path


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """The two hub names served locally, a fresh cache, a photo named cat.jpg, cwd = tmp_path."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(hub.ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "_REGISTRY", dict(hub._REGISTRY))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "cat.jpg")
    with serving() as (url, files, hits):
        for name, fmt in MIRRORED.items():
            path = f"/{name}/{hub.entry(name).filename}"
            files[path] = _published_like(name, fmt, tmp_path).read_bytes()
            hub.register(name, url + path, hashlib.sha256(files[path]).hexdigest(), fmt, replace=True)
        yield hits


def _run(path: Path) -> list[dict]:
    """The namespace after each block (shallow copies; the blocks share one namespace)."""
    namespace: dict = {}
    after = []
    for i, code in enumerate(blocks(path), 1):
        exec(compile(code, f"{path.relative_to(ROOT)}, python block {i}", "exec"), namespace)
        after.append(dict(namespace))
    return after


def _need_every_framework():
    for module in ("torch", "torchvision", "keras", "flax", "PIL"):
        pytest.importorskip(module)


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_readme_python_examples_run(mirror, capsys):
    _need_every_framework()
    assert len(blocks()) == 2  # the quickstart (one loop, the same code in the three packages), then the contract
    first, ns = _run(README)
    # What the comments claim; the last package of the loop is Flax.
    import ast

    import jax
    from flax import nnx

    assert isinstance(first["model"], nnx.Module)
    assert isinstance(first["x"], jax.Array) and first["x"].shape == (1, 224, 224, 3)
    printed = [line.split(" ", 1) for line in capsys.readouterr().out.splitlines()]
    assert [pkg for pkg, _ in printed] == ["resnet_torch", "resnet_keras", "resnet_flax"]
    tops = [ast.literal_eval(text)[0] for _, text in printed]
    for top in tops:
        assert len(top) == 5 and all(isinstance(i, int) and isinstance(n, str) and 0 <= p <= 1 for i, n, p in top)
        assert [p for *_, p in top] == sorted((p for *_, p in top), reverse=True)
    assert len({tuple(i for i, *_ in top) for top in tops}) == 1  # the three packages name the same five classes
    assert ns["images"].shape == (2, 224, 224, 3) and ns["images"].dtype == np.float32
    assert ns["logits"].shape == (2, 1000) and ns["logits"].dtype == np.float32
    assert list(ns["feats"]) == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert all(v.dtype == np.float32 and v.ndim == 4 for v in ns["feats"].values())
    name = "keras/resnet50.imagenet"
    assert mirror == [f"/{name}/{hub.entry(name).filename}"]  # fetched once, then cached for the other two


@pytest.mark.slow  # skipped by the development run (README); CI runs it
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_docs_python_examples_run(mirror, page):
    _need_every_framework()
    pytest.importorskip("onnx")
    assert blocks(page), page
    ns = _run(page)[-1]
    if page.name == "usage.md":
        assert ns["logits"].shape == (2, 1000) and ns["logits"].dtype == np.float32
        assert list(ns["feats"]) == ["stem", "stage1", "stage2", "stage3", "stage4"]
        assert all(v.dtype == np.float32 and v.ndim == 4 for v in ns["feats"].values())
        assert ns["spec"] == S.preset("resnext50_32x4d")
        assert set(ns["weights"]) == set(S.preset("resnext50_32x4d").param_shapes())
        assert len(ns["backbone"].outputs) == 5
    elif page.name == "formats.md":
        import resnet_flax, resnet_keras, resnet_torch

        theirs = resnet_keras.export_weights(ns["kmodel"])
        for model, pkg in ((ns["tmodel"], resnet_torch), (ns["fmodel"], resnet_flax)):
            ours = pkg.export_weights(model)
            assert set(ours) == set(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in ours)  # bit-identical
    else:
        assert ns["fspec"].folded and ns["fspec"] == ns["spec"].replace(folded=True)
        assert Path("r50.onnx").stat().st_size > 0


# ----------------------------------------------------------------------------- figures vs JSON

def _mutant_tables(*kinds: str) -> list[dict]:
    return [json.loads((RESULTS / f"mutants-cpu-{kind}.json").read_text()) for kind in kinds]


def test_the_pitch_counts_come_from_the_catch_tables():
    """The README's broken-port line: caught and false-alarm counts summed over the five JSON
    catch tables (V1 in both styles, then per block kind), each cell's outcome recomputed from
    the spec (``Mutant.applies``), not read from the run."""
    caught = quiet = 0
    for table in _mutant_tables("torchvision", "keras", "basic", "resnext", "preact"):
        spec = S.ResNetSpec.from_dict(table["spec"])
        for c in table["cells"]:
            applies = mutants.CATALOGUE[c["mutant"]].applies(spec, c["mode"], c["precision"])
            assert c["outcome"] == ("caught" if applies else "passes"), c
            caught += applies
            quiet += not applies
        assert all(c["status"] == "pass" for c in table["baseline"])
        quiet += len(table["baseline"])
    line = next(l for l in README.read_text().splitlines() if "broken-port runs caught" in l)
    m = re.search(r"(\d+) of (\d+) broken-port runs caught.* 0 false alarms in (\d+) runs", line)
    assert m, line
    assert (int(m[1]), int(m[2]), int(m[3])) == (caught, caught, quiet)


def _architecture_runs() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((RESULTS / "architectures-cpu").glob("*.json"))}


def test_the_pitch_architecture_line_comes_from_the_runs():
    runs = _architecture_runs()
    assert set(runs) == set(S.ARCHS) and all(r["ok"] for r in runs.values())
    targets = {tuple(row["target"].split("[")[0] for row in r["rows"]) for r in runs.values()}
    assert targets == {("torch", "keras", "flax", "onnx")}
    worst = max(row["rel"] / r["config"]["peer_fp32_error"] for r in runs.values() for row in r["rows"])
    line = next(l for l in README.read_text().splitlines() if "architectures x 4 targets" in l)
    m = re.search(r"(\d+) architectures x 4 targets .* the worst at ([\d.]+)x the float32 peer's error", line)
    assert m, line
    assert int(m[1]) == len(runs) and float(m[2]) == round(worst, 1)


# ----------------------------------------------------------------------------- links and the index

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _docs() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_relative_link_resolves():
    broken = []
    for page in _docs():
        for target in LINK.findall(page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_readme_is_short_and_holds_no_dated_result():
    text = README.read_text()
    assert len(text.splitlines()) < 250
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "a dated result belongs in docs/results/"


def test_the_results_index_names_every_result_page_and_file():
    index = (RESULTS / "README.md").read_text()
    linked = {(RESULTS / t).resolve() for t in LINK.findall(index)}
    for page in RESULTS.glob("*.md"):
        if page.name != "README.md" and not page.name.startswith("bench-"):  # bench-*.md: the tool's own tables
            assert page.resolve() in linked, page.name
    for data in [*RESULTS.glob("*.json"), *(p for p in RESULTS.iterdir() if p.is_dir())]:
        assert data.resolve() in linked, data.name
    rows = [line for line in index.splitlines() if line.startswith("| 20")]
    assert rows and all(re.match(r"\| \d{4}-\d\d-\d\d \| [^|]+ \| [^|]+ \| .*\]\(", row) for row in rows)


def test_the_fastest_path_line_comes_from_the_recorded_bench():
    """The README's fastest-path figure is the quiet batch-1 run's ratio to torchvision fp32, and
    that path is the fastest row of the run."""
    run = json.loads((RESULTS / "bench-openvino-cpu-2026-12-07-resnet50-b1-quiet.json").read_text())
    ratios = run["anchor"]["ratios"]
    line = next(l for l in README.read_text().splitlines() if "fastest CPU path" in l)
    m = re.search(r"OpenVINO int8 .* at ([\d.]+)x torchvision fp32", line)
    assert m and float(m[1]) == round(ratios["openvino-int8 fp32"], 2), line
    assert max(ratios, key=ratios.get) == "openvino-int8 fp32"


def test_every_command_line_example_parses():
    """Each ``resnet-parity`` line of the README's command-line block is one the CLI's parser
    takes (an option renamed or removed would leave the README wrong); a misspelt option is
    refused, so the test can fail."""
    import shlex

    from shared.tools.cli import build_parser

    section = README.read_text().split("## Command line", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [shlex.split(line, comments=True) for line in section.splitlines()]
    commands = [words[1:] for words in lines if words and words[0] == "resnet-parity"]
    assert len(commands) >= 15
    parser = build_parser()
    for words in commands:
        parser.parse_args(words)
    with pytest.raises(SystemExit):
        parser.parse_args(["check", "--mode", "fit", "--recipes", "check-adamw"])
