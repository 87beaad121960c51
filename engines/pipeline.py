"""The build graph behind `make engines` / `python -m engines`: configs, the Builder that runs
steps against the manifest, and the planner that says what would be rebuilt.

Each step names its artifact, the one frozen config whose tagged recipe (common.config.recipe)
goes into the manifest key, the artifacts it reads and its other inputs (data, base model, GPU).
A step is rebuilt when its key changed, its file no longer matches, or an artifact it reads is
rebuilt in the same run; a step the model family or the machine cannot support is skipped with a
one-line reason, recorded in the manifest. The steps themselves are in engines/steps.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibration.calibset import CalibConfig
from calibration.ptq_search import StaticConfig
from common.config import recipe
from common.env import cpu_device, peak_memory, versions
from common.errors import ConfigError, UserError
from common.manifest import Manifest, atomic_output
from common.modelsource import DEFAULT_MODEL, model_fingerprint
from common.task import TaskSpec
from common.workdir import build_lock, check_writable, clean_leftovers, lock_held
from engines.preflight import check_calibration, check_models, missing_inputs, model_bytes
from engines.trt_build import TrtConfig
from export.hf import HfConfig
from export.onnx_export import ExportConfig
from export.optimum_anchors import OptimumConfig
from export.ort_graphs import DynamicConfig, FuseConfig
from export.qat_export import QatExportConfig
from export.torch_dynamic import TorchDynamicConfig
from export.torch_fp16 import TorchFp16Config
from train.finetune import FinetuneConfig
from train.qat import QatConfig
from train.qlora import QloraConfig
from train.student import StudentConfig, TeacherConfig

# "task" (the data read and checked once, artifacts/task/) runs in every build: every later
# stage reads its rows from there
STAGES = ("task", "baseline", "onnx", "dynamic", "calibration", "ptq", "student", "qat", "qlora",
          "optimum", "hf", "trt")


@dataclass(frozen=True)
class BuildConfig:
    """Every step's config. `model` is set into each config that has that field (engines.__main__
    does that; tests build configs directly). The task's data is read once, by the task step:
    every config's `data` is pointed at the task artifact (artifacts/task/) here."""

    model: str = DEFAULT_MODEL
    task: TaskSpec = field(default_factory=TaskSpec)
    artifacts: str = "artifacts"
    reports: str = "reports"  # where `make report` wrote the scores the model cards carry
    stages: tuple[str, ...] = STAGES
    force: bool = False
    # train QLoRA beside the baseline on CPU, one thread each: on a small CPU a training step
    # scales poorly with threads (engines/overlap.py; measured: docs/decisions.md); False: one
    # after the other
    overlap: bool = True
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    torch_fp16: TorchFp16Config = field(default_factory=TorchFp16Config)
    export: ExportConfig = field(default_factory=ExportConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    torch_dynamic: TorchDynamicConfig = field(default_factory=TorchDynamicConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    static: StaticConfig = field(default_factory=StaticConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    qat_export: QatExportConfig = field(default_factory=QatExportConfig)
    qlora: QloraConfig = field(default_factory=QloraConfig)
    optimum: OptimumConfig = field(default_factory=OptimumConfig)
    hf: HfConfig = field(default_factory=HfConfig)
    trt: TrtConfig = field(default_factory=TrtConfig)

    def __post_init__(self) -> None:
        import dataclasses

        for f in dataclasses.fields(self):  # `data` is a location: no recipe or key changes
            sub = getattr(self, f.name)
            if f.name != "task" and hasattr(sub, "data") and not isinstance(sub, type):
                object.__setattr__(self, f.name, dataclasses.replace(sub, data=self.task_dir))
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ConfigError(f"unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)}")
        # static PTQ calibrates on prefixes of the calibration set, in whole calibration batches
        rows, batch = self.static.calib_rows, self.calib.batch_size
        if min(rows) < batch:
            raise ConfigError(f"--ptq-calib-rows {min(rows)} is less than one calibration batch "
                              f"(--calib-batch-size {batch}): raise it or lower the batch size")
        if max(rows) > self.calib.size:
            raise ConfigError(f"--ptq-calib-rows {max(rows)} is more than the calibration set "
                              f"holds (--calib-size {self.calib.size}): raise --calib-size")

    @property
    def task_dir(self) -> str:
        """The task artifact, where every step reads its rows (the build writes it first)."""
        return str(Path(self.artifacts) / "task")


class MissingInput(UserError):
    """A step of the run reads an artifact that is neither built nor built in this run."""


@dataclass
class Step:
    name: str
    path: Callable[[dict[str, str]], str]  # inputs -> artifact path relative to the root
    config: Any  # the frozen config whose recipe goes into the manifest key
    deps: tuple[str, ...]  # artifacts this step reads
    sources: Callable[[], dict[str, str]]  # other inputs: data fingerprints, model, GPU
    build: Callable[[Path], dict[str, Any] | None]
    skip: str | None = None  # why this step cannot be built here (one line)
    code: str = ""  # fingerprint of the code that builds it (set by steps_for: common.codehash)
    # packages an artifact if it is built (the Hugging Face folders): skipped with the reason when
    # its input is not, where a required input would stop the run
    optional: bool = False


def derived_skip(dep: str, why: str) -> str:
    """The reason a step is skipped when an artifact it is made from is skipped."""
    return f"it is made from {dep}, which is skipped ({why})"


def fixed(rel: str) -> Callable[[dict[str, str]], str]:
    return lambda inputs: rel


class Builder:
    def __init__(self, cfg: BuildConfig):
        self.cfg = cfg
        self.root = Path(cfg.artifacts)
        # a corrupt manifest is replaced by the entries recovered from .entries (build_all
        # writes them; a dry run plans with them)
        self.manifest = Manifest(self.root, recover=True)
        self.built: list[str] = []
        self.up_to_date: list[str] = []
        self.skipped: dict[str, str] = {}
        self.in_run: set[str] = set()  # the steps of this run (their outputs will exist)
        self.background: Any = None  # engines.overlap.Background: QLoRA training beside us
        self.record: list[dict[str, Any]] = []  # what each step did, its time and peak memory

    def art(self, name: str) -> str:
        """Input reference to another artifact: its current hash (it must be built)."""
        return self.manifest.get(name)["sha256"]

    def path(self, name: str) -> Path:
        """An artifact a step reads, verified (intact, made from the current inputs) like every
        other read of a built artifact."""
        return self.manifest.verify(name)

    def inputs(self, step: Step) -> dict[str, str]:
        return {**{f"artifact:{d}": self.art(d) for d in step.deps}, **step.sources(),
                **({"code": step.code} if step.code else {})}

    def skip_reason(self, step: Step) -> str | None:
        if step.skip:
            return step.skip
        for d in step.deps:
            # skipped in this run, or (outside the run) skipped by an earlier one: say why
            why = self.skipped.get(d) or (None if d in self.in_run else self.manifest.skipped(d))
            if why:
                return derived_skip(d, why)
            if d not in self.in_run and not self.manifest.built(d):
                if step.optional:
                    return f"{d} is not built here (build its stage first)"
                raise MissingInput(missing_inputs(self, [step]) or f"{d} is not built")
        return None

    def check_inputs(self, steps: list[Step]) -> None:
        """Before anything is built: every artifact a step reads is built, or built in this run,
        or skipped (the step is then skipped too); else one line naming the stages to add."""
        why = missing_inputs(self, steps)
        if why:
            raise MissingInput(why)

    def expected_bytes(self, step: Step) -> int:
        """Disk space a step will take: its artifact's size when built before, else that of the
        artifact it is made from, else twice the base model's weights (a training step)."""
        for name in (step.name, *step.deps):
            e = self.manifest.entries.get(name, {})
            if isinstance(e.get("size_bytes"), int):
                return e["size_bytes"]
        return 2 * model_bytes(self.cfg.model)

    def run(self, step: Step) -> None:
        why = self.skip_reason(step)
        if why:
            print(f"[skip] {step.name}: {why}")
            self.skipped[step.name] = why
            self.manifest.record_skip(step.name, recipe(step.config), why)
            self.record.append({"step": step.name, "action": "skipped", "reason": why})
            return
        inputs = self.inputs(step)
        rel = step.path(inputs)
        stale = "--force" if self.cfg.force else self.manifest.why_stale(
            step.name, recipe(step.config), inputs)
        if stale is None:
            print(f"[up to date] {step.name}: {self.root / rel}")
            self.up_to_date.append(step.name)
            self.record.append({"step": step.name, "action": "up to date"})
            return
        # room for it, said before the step's work rather than after it
        check_writable((self.root / rel).parent, self.expected_bytes(step), "--artifacts")
        print(f"[build] {step.name} -> {self.root / rel} ({stale})")
        t0 = time.time()
        with peak_memory() as peak, atomic_output(self.root / rel) as tmp:
            extra = step.build(tmp) or {}
        seconds = round(time.time() - t0, 1)
        # a step trained in a child process (QLoRA beside the baseline) says its own time and peak
        seconds = extra.pop("child_seconds", seconds)
        child_mb = extra.pop("child_peak_rss_mb", None)
        mb = peak.mb if child_mb is None else round(child_mb, 1)
        if step.name != "task" and self.manifest.built("task"):  # what it was made for
            extra.setdefault("task", self.manifest.get("task").get("task"))
        extra["build_seconds"] = seconds
        extra["build_peak_rss_mb"] = mb
        if peak.since_start:  # the kernel kept the process' peak: it may be an earlier step's
            extra["build_peak_rss_note"] = "process peak since start (no per-step reset here)"
        self.manifest.record(step.name, rel, recipe(step.config), inputs, versions(), cpu_device(),
                             extra)
        self.built.append(step.name)
        self.record.append({"step": step.name, "action": "built", "why": stale,
                            "seconds": seconds, "peak_rss_mb": mb,
                            **({"peak_since_process_start": True} if peak.since_start else {})})

    def plan(self, steps: list[Step]) -> dict[str, str]:
        """What `run` would do to each step, without building: "build: <why>", "up to date" or
        "skip: <why>". A step whose input artifact would be rebuilt is rebuilt too."""
        out: dict[str, str] = {}
        for step in steps:
            why = self.skip_reason(step)
            if why:
                self.skipped[step.name] = why
                out[step.name] = f"skip: {why}"
                continue
            rebuilt = [d for d in step.deps if out.get(d, "").startswith("build")]
            if self.cfg.force:
                out[step.name] = "build: --force"
            elif rebuilt:
                out[step.name] = f"build: its input {rebuilt[0]} is rebuilt in this run"
            elif not all(self.manifest.built(d) for d in step.deps):
                missing = next(d for d in step.deps if not self.manifest.built(d))
                out[step.name] = f"build: its input {missing} is built in this run"
            else:
                stale = self.manifest.why_stale(step.name, recipe(step.config), self.inputs(step))
                out[step.name] = "up to date" if stale is None else f"build: {stale}"
        return out


def model_source(model: str) -> Callable[[], dict[str, str]]:
    """What a training recipe reads besides the task artifact: the base model."""
    return lambda: {"model": model_fingerprint(model)}


def steps_for(b: Builder) -> list[Step]:
    """The steps of the stages asked for, in build order, each carrying the fingerprint of the
    code that builds it (its factory and what that imports: common.codehash)."""
    from common.codehash import code_fingerprint
    from engines.steps import STEP_FACTORIES

    out: list[Step] = []
    for stage in STAGES:  # fixed order: later stages read earlier artifacts
        if stage in b.cfg.stages or stage == "task":
            for factory in STEP_FACTORIES[stage]:
                made = factory(b)
                code = code_fingerprint(factory)
                for step in made if isinstance(made, list) else [made]:
                    step.code = step.code or code
                    out.append(step)
    return out


def start_overlap(b: Builder, steps: list[Step]) -> Any:
    """Start QLoRA's training in a child process when it and the baseline are both built in this
    run on CPU (engines/overlap.py says why and when); None otherwise."""
    from engines import overlap

    pair = [s for s in steps if s.name in ("baseline", "qlora")]
    if not b.cfg.overlap or len(pair) != 2 or not overlap.eligible(b.cfg.finetune, b.cfg.qlora):
        return None
    if not all(v.startswith("build") for v in Builder(b.cfg).plan(pair).values()):
        return None
    return overlap.start(b.cfg.qlora, b.root)


RECORD_NAME = "build-record.json"


def build_all(cfg: BuildConfig) -> Builder:
    """Build every step of the stages asked for; when anything was built, write the run's record
    (each step's action, wall time and peak memory, measured here) to artifacts/build-record.json.

    Before any step: the folder is writable with room for the largest step, no other build holds
    it (artifacts/.lock), what killed builds left is cleaned (an interrupted swap put back), a
    corrupt manifest is rebuilt from the entry copies, the base model is checked, and every input
    of the run is built or built in it. A build with nothing to do writes nothing (idle_build):
    it succeeds on a read-only folder."""
    idle = idle_build(cfg)
    if idle is not None:
        return idle
    root = check_writable(cfg.artifacts, 0, "--artifacts")
    with build_lock(root):
        for line in clean_leftovers(root, locked=True):
            print(f"[clean] {line}")
        b = Builder(cfg)
        repaired = b.manifest.repair()
        if repaired:
            print(f"[repair] {repaired}")
        b.manifest.save_copies()
        return _build(b)


def idle_build(cfg: BuildConfig) -> Builder | None:
    """The finished Builder of a build that would write nothing (every step up to date, every skip
    already recorded with its reason, no leftover to clean, no manifest to repair or entry copy
    to add), having written nothing; None when the build has something to do. Checked before the
    folder is asked to be writable: an up-to-date build on a read-only folder succeeds."""
    from common.manifest import entry_copy_path

    root = Path(cfg.artifacts)
    if not root.is_dir() or lock_held(root) or clean_leftovers(root, dry_run=True):
        return None  # the usual path says what is wrong (another build) or does the work
    import contextlib
    import io

    b = Builder(cfg)
    if b.manifest.corrupt or not b.manifest.entries or any(
            "skipped" not in e and not entry_copy_path(root, n).is_file()
            for n, e in b.manifest.entries.items()):
        return None
    said = io.StringIO()  # preflight's lines: printed once, by whichever path goes on
    with contextlib.redirect_stdout(said):
        preflight(cfg)
        steps = steps_for(b)
        b.in_run = {s.name for s in steps}
        b.check_inputs(steps)
        plan = Builder(cfg).plan(steps)
    if any(v.startswith("build") for v in plan.values()):
        return None
    for step in steps:
        why = plan[step.name].removeprefix("skip: ")
        if plan[step.name].startswith("skip") and (
                b.manifest.entries.get(step.name, {}).get("skipped") != why
                or b.manifest.entries[step.name].get("recipe") != recipe(step.config)):
            return None  # a skip to record: run() writes it
    print(said.getvalue(), end="")
    for step in steps:
        if plan[step.name] == "up to date":
            print(f"[up to date] {step.name}: {root / step.path(b.inputs(step))}")
            b.up_to_date.append(step.name)
        else:
            why = plan[step.name].removeprefix("skip: ")
            print(f"[skip] {step.name}: {why}")
            b.skipped[step.name] = why
    print(f"nothing to rebuild: all {len(b.up_to_date)} artifact(s) in {root} are up to date "
          "(nothing written)")
    if b.skipped:
        print(f"skipped ({len(b.skipped)}, reasons above): {', '.join(b.skipped)}")
    return b


def _build(b: Builder) -> Builder:
    cfg = b.cfg
    t0 = time.time()
    preflight(cfg)
    steps = steps_for(b)
    b.in_run = {s.name for s in steps}
    b.check_inputs(steps)
    planned = Builder(cfg)
    planned.in_run = b.in_run
    plan = planned.plan(steps)
    todo = [s for s in steps if plan[s.name].startswith("build")]
    check_writable(b.root, max((b.expected_bytes(s) for s in todo), default=0), "--artifacts")
    try:
        for step in steps:
            if step.name == "task":  # first: QLoRA, started beside the baseline, reads its rows
                b.run(step)
                b.background = start_overlap(b, steps)
            elif b.background is not None and step.name == "baseline":
                with b.background.sharing_cores():
                    b.run(step)
            else:
                b.run(step)
    finally:
        if b.background is not None:
            b.background.abandon()  # nothing left to do after a collect; else stop the child
    if b.built:
        write_record(b, time.time() - t0)
        print(f"built: {', '.join(b.built)}" +
              (f"; up to date: {', '.join(b.up_to_date)}" if b.up_to_date else ""))
    elif b.up_to_date:
        print(f"nothing to rebuild: all {len(b.up_to_date)} artifact(s) in {b.root} are up to date")
    if b.skipped:
        print(f"skipped ({len(b.skipped)}, reasons above): {', '.join(b.skipped)}")
    return b


RECORD_RUNS = 20  # runs kept in the record (the newest last)


def write_record(b: Builder, seconds: float) -> None:
    """Append this run to the record. Runs are kept, not replaced: `make report` rebuilds the
    hf folders (their cards quote the reports), and that short run must not hide the full build
    the README's build time quotes."""
    from common.manifest import write_json_atomic

    path = b.root / RECORD_NAME
    runs: list = []
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        runs = old["runs"] if isinstance(old, dict) and isinstance(old.get("runs"), list) else []
    except (OSError, ValueError):
        pass  # none yet, or unreadable: a record is a log, never a reason to fail a build
    runs.append({
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_minutes": round(seconds / 60, 2), "stages": list(b.cfg.stages),
        "full": set(b.cfg.stages) >= set(STAGES),
        "overlap": b.background is not None, "device": cpu_device(), "versions": versions(),
        "steps": b.record})
    write_json_atomic(path, {"runs": runs[-RECORD_RUNS:]})


def plan_all(cfg: BuildConfig) -> dict[str, str]:
    """What build_all would do to each step (nothing is written; a corrupt manifest is planned
    with the entries a build would recover, and says so)."""
    b = Builder(cfg)
    if b.manifest.corrupt:
        print(f"[repair] {b.manifest.path} is corrupt ({b.manifest.corrupt}): a build rebuilds it "
              f"from the entry copies of {len(b.manifest.entries)} intact artifact(s)")
    preflight(cfg)
    steps = steps_for(b)
    b.in_run = {s.name for s in steps}
    b.check_inputs(steps)
    return b.plan(steps)


def preflight(cfg: BuildConfig) -> None:
    """Before any step: the data read and every row and label checked (one line naming file, row
    and fix; nothing is built), then the base models and the calibration set's size."""
    from common.task import resolve_task

    task = resolve_task(cfg.task)
    print(f"[task] {task.describe()}")
    for w in task.warnings:
        print(f"warning: {w}")
    check_models(cfg, task)
    check_calibration(cfg, task)
