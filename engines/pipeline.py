"""The build graph behind `make engines` / `python -m engines`.

Each step names its artifact, its recipe (a canonical dict) and the hashes of its inputs; the
manifest decides whether it is current. Steps run in order, each one only if something it
depends on changed, and say so in one line either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.data import DEFAULT_DATASET, dataset_fingerprint
from common.env import cpu_device, versions
from common.manifest import Manifest, atomic_output
from common.modelsource import DEFAULT_MODEL, model_fingerprint
from export.onnx_export import ExportConfig
from train.finetune import FinetuneConfig

STAGES = ("baseline", "onnx")


@dataclass(frozen=True)
class BuildConfig:
    model: str = DEFAULT_MODEL
    data: str = DEFAULT_DATASET
    artifacts: str = "artifacts"
    stages: tuple[str, ...] = STAGES
    force: bool = False
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


@dataclass
class Step:
    name: str
    rel_path: str
    recipe: dict[str, Any]
    inputs: Callable[[], dict[str, str]]
    build: Callable[[Path], dict[str, Any] | None]


class Builder:
    def __init__(self, cfg: BuildConfig):
        self.cfg = cfg
        self.root = Path(cfg.artifacts)
        self.manifest = Manifest(self.root)
        self.built: list[str] = []
        self.skipped: list[str] = []

    def art(self, name: str) -> str:
        """Input reference to another artifact: its current hash (it must be built)."""
        return self.manifest.get(name)["sha256"]

    def run(self, step: Step) -> None:
        inputs = step.inputs()
        if not self.cfg.force and self.manifest.is_current(step.name, step.recipe, inputs):
            print(f"[up to date] {step.name}: {self.root / step.rel_path}")
            self.skipped.append(step.name)
            return
        print(f"[build] {step.name} -> {self.root / step.rel_path}")
        t0 = time.time()
        with atomic_output(self.root / step.rel_path) as tmp:
            extra = step.build(tmp) or {}
        extra["build_seconds"] = round(time.time() - t0, 1)
        self.manifest.record(step.name, step.rel_path, step.recipe, inputs, versions(),
                             cpu_device(), extra)
        self.built.append(step.name)


def baseline_step(b: Builder) -> Step:
    from train.finetune import finetune

    ft = b.cfg.finetune

    def inputs() -> dict[str, str]:
        fp = dataset_fingerprint(ft.data, ("train", "validation"))
        return {"data:train": fp["train"], "data:validation": fp["validation"],
                "model": model_fingerprint(ft.model)}

    def build(tmp: Path) -> dict[str, Any]:
        r = finetune(ft, tmp)
        return {"best_val_macro_f1": r["best_val_macro_f1"], "train_minutes": r["train_minutes"]}

    return Step("baseline", "baseline", ft.recipe(), inputs, build)


def onnx_step(b: Builder) -> Step:
    from export.onnx_export import export_onnx

    ex = b.cfg.export

    def build(tmp: Path) -> dict[str, Any]:
        return export_onnx(b.root / "baseline", tmp, ex)

    return Step("onnx-fp32", "onnx/fp32.onnx", asdict(ex),
                lambda: {"artifact:baseline": b.art("baseline")}, build)


STEP_FACTORIES: dict[str, list[Callable[[Builder], Step]]] = {
    "baseline": [baseline_step],
    "onnx": [onnx_step],
}


def build_all(cfg: BuildConfig) -> Builder:
    unknown = set(cfg.stages) - set(STEP_FACTORIES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {list(STEP_FACTORIES)}")
    b = Builder(cfg)
    for stage in STEP_FACTORIES:  # fixed order: later stages read earlier artifacts
        if stage in cfg.stages:
            for factory in STEP_FACTORIES[stage]:
                b.run(factory(b))
    if b.built:
        print(f"built: {', '.join(b.built)}" + (f"; up to date: {', '.join(b.skipped)}" if b.skipped else ""))
    else:
        print(f"nothing to rebuild: all {len(b.skipped)} artifact(s) in {b.root} are up to date")
    return b
