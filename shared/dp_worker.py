"""One data-parallel engine's step, run in its own process (and process group):
``python -m shared.dp_worker JOB.json``.

The parent (``shared.check_dp``) sets what must precede the framework's import (``KERAS_BACKEND``,
``XLA_FLAGS`` with N virtual CPU devices); this process imports the engine module by name, runs
its ``run(spec, weights, images, labels, replicas=, lr=, momentum=, **options)`` and writes the
returned arrays as an ``.npz`` (written beside, then renamed), or ``error`` and ``traceback``.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    from shared import weights as W
    from shared.spec import ResNetSpec

    try:
        module = importlib.import_module(job["module"])
        spec = ResNetSpec.from_dict(job["spec"])
        weights = W.load(job["weights"], spec)
        result = module.run(spec, weights, np.load(job["images"]), np.load(job["labels"]),
                            replicas=job["replicas"], lr=job["lr"], momentum=job["momentum"], **job["options"])
        result["versions"] = np.array(json.dumps(module.versions()))
    except Exception as e:  # reported to the parent as one line plus the traceback
        result = {"error": np.array(f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"),
                  "traceback": np.array(traceback.format_exc())}
    out = Path(job["out"])
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".npz", delete=False) as f:
        np.savez(f, **{k: np.asarray(v) for k, v in result.items()})
    Path(f.name).replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
