"""What a build checks before its first step, so a mistake costs seconds, not a training: the
base model of each training stage, the calibration set's size against its batch, and (for the
Builder) the stage to add when an input is missing and how much disk a step will take."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import ConfigError
from common.modelsource import resolve_model, validate_model

if TYPE_CHECKING:
    from common.task import Task
    from engines.pipeline import BuildConfig, Builder, Step


def check_models(cfg: BuildConfig, task: Task) -> None:
    """The base model of each training stage of the run, before anything else reads it (a
    classification head must have the task's number of labels)."""
    if "baseline" in cfg.stages:
        validate_model(cfg.finetune.model, cfg.finetune.max_length, num_labels=task.num_labels)
    if "qlora" in cfg.stages:
        validate_model(cfg.qlora.model, cfg.qlora.max_length, "--qlora-max-length",
                       num_labels=task.num_labels)


def check_calibration(cfg: BuildConfig, task: Task) -> None:
    """The validation split holds at least one calibration batch (else ONNX Runtime's calibrator
    fails after the baseline's training with "No data is collected")."""
    if "calibration" not in cfg.stages:
        return
    val = len(task.split("validation"))
    if min(cfg.calib.size, val) < cfg.calib.batch_size:
        raise ConfigError(f"the validation split of {task.source} has {val} rows, fewer than one "
                          f"calibration batch (--calib-batch-size {cfg.calib.batch_size}): lower "
                          "--calib-batch-size or use more validation rows")
    if "ptq" in cfg.stages and max(cfg.static.calib_rows) > val:
        raise ConfigError(f"--ptq-calib-rows {max(cfg.static.calib_rows)} is more than the "
                          f"validation split of {task.source} holds ({val} rows): lower it")


def missing_inputs(b: Builder, steps: list[Step]) -> str | None:
    """None when every artifact the steps read is built, built in this run or skipped (a step
    reading a skipped one is skipped too); else one line naming the stages to add (those the
    missing artifacts need too, transitively)."""
    from engines.pipeline import STAGES

    def lacking(run: list[Step]) -> list[tuple[str, str]]:
        names = {s.name for s in run}
        return [(s.name, d) for s in run if not s.skip and not s.optional for d in s.deps
                if d not in names and not b.manifest.built(d) and not b.manifest.skipped(d)]

    gaps = lacking(steps)
    if not gaps:
        return None
    by_stage = {st: _stage_steps(b, st) for st in STAGES}
    where = {s.name: st for st, made in by_stage.items() for s in made}
    stages, todo = set(b.cfg.stages) | {"task"}, gaps  # the task step runs in every build
    while todo:
        new = {where[d] for _, d in todo if d in where} - stages
        if not new:
            break
        stages |= new
        todo = lacking([s for st in STAGES if st in stages for s in by_stage[st]])
    step, dep = gaps[0]
    add = [st for st in STAGES if st in stages and st not in b.cfg.stages and st != "task"]
    if not add:
        return f"{step} reads {dep}, which is not built in {b.root}, and no stage builds it"
    return (f"{step} reads {dep}, which is not built in {b.root}: add stage(s) {', '.join(add)} "
            f"(--stages {','.join(st for st in STAGES if st in stages and st != 'task')})")


def _stage_steps(b: Builder, stage: str) -> list[Step]:
    from engines.steps import STEP_FACTORIES

    out: list[Step] = []
    for factory in STEP_FACTORIES[stage]:
        made = factory(b)
        out += made if isinstance(made, list) else [made]
    return out


def model_bytes(spec: str) -> int:
    """Bytes of a local base model's weight files (a Hub model's are not known here: 256 MB)."""
    path = Path(resolve_model(spec))
    if not path.is_dir():
        return 256 << 20
    return sum(f.stat().st_size for f in path.iterdir()
               if f.is_file() and f.suffix in {".safetensors", ".bin", ".pt"})
