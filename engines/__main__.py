"""python -m engines [--model ...] [--data ...] [--text-column ...] [--stages baseline,onnx,...]
[--dry-run]

The task is declared once (TaskSpec): --data (a Hub name or a local folder of train / validation
/ test .jsonl, .csv or .parquet files), --text-column, --text-pair-column (a pair task),
--label-column, --labels, --hub-config, --split-names, --validation-fraction and
--validation-seed. The build reads and checks it first (artifacts/task/); every step reads its
rows from there.

Every field of every step's config has a flag (generated from the frozen dataclasses, so a flag
cannot drift from the field it sets): the baseline's unprefixed (--epochs, --lr ...), the others
prefixed by their step (--export-*, --fuse-*, --dynamic-*, --calib-*, --ptq-*, --qat-*,
--qat-export-*, --qlora-*, --trt-*, --trt-profile-*). --model, --device, --threads,
--limit-train and --limit-eval apply to every step that has that field.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from common.cliconfig import add_config_flags, parse_args
from common.config import add_flags, from_flags
from common.errors import ConfigError, cli
from common.modelsource import DEFAULT_MODEL
from common.task import TaskSpec
from engines.pipeline import STAGES, BuildConfig, build_all, plan_all

SHARED = ("model", "device", "threads", "limit_train", "limit_eval")
# every step reads the task artifact: no step's `data` is a flag (BuildConfig sets it)
NOT_FLAGS = SHARED + ("data",)
# BuildConfig field -> flag prefix; fields a step sets itself are left out of the flags.
PREFIXES: dict[str, tuple[str, tuple[str, ...]]] = {
    "finetune": ("", ()), "torch_fp16": ("torch-fp16-", ()), "export": ("export-", ()), "fuse": ("fuse-", ()),
    "torch_dynamic": ("torch-dynamic-", ()), "dynamic": ("dynamic-", ()), "calib": ("calib-", ()),
    "static": ("ptq-", ()), "teacher": ("teacher-", ()), "student": ("student-", ()),
    "qat": ("qat-", ()), "qat_export": ("qat-export-", ("flavour",)),
    "qlora": ("qlora-", ()), "optimum": ("optimum-", ()), "hf": ("hf-", ()),
    "trt": ("trt-", ("precision", "calib_batch_size")),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hub id or local dir (default: packaged MiniLM)")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--reports", default="reports", help="scores the model cards carry")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {STAGES}")
    p.add_argument("--force", action="store_true", help="rebuild even if current")
    p.add_argument("--no-overlap", dest="overlap", action="store_false",
                   help="train QLoRA after the baseline instead of beside it (CPU builds)")
    p.add_argument("--dry-run", action="store_true", help="say what would be built, build nothing")
    p.add_argument("--families", action="store_true",
                   help="print the encoder families x stages table (Markdown) and exit")
    p.add_argument("--readme", default=None,
                   help="with --families: write the table into this README's families block")
    p.add_argument("--device", default=None, help="auto | cpu | cuda, for every training step")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the training steps")
    p.add_argument("--limit-train", type=int, default=None, help="first N training rows (smoke runs)")
    p.add_argument("--limit-eval", type=int, default=None, help="first N validation rows")
    add_flags(p, TaskSpec, title="the task: data, columns, labels (TaskSpec)")
    for a in p._actions:  # not given, a task flag keeps the task --artifacts was built for
        if a.dest in {f.name for f in dataclasses.fields(TaskSpec)}:
            a.config_default = None  # type: ignore[attr-defined]
    for name, (prefix, skip) in PREFIXES.items():
        cls = type(getattr(BuildConfig(), name))
        add_flags(p, cls, prefix, skip=NOT_FLAGS + skip, title=f"{name} ({cls.__name__})")
    p.add_argument("--tolerable-loss", dest="ptq_tolerable_loss", type=float, default=None,
                   metavar="PT", help="= --ptq-tolerable-loss: largest validation-B macro F1 drop "
                   "(pt) the static-PTQ search accepts")
    add_config_flags(p)
    return p


def parse(argv: list[str] | None = None) -> tuple[BuildConfig, argparse.Namespace]:
    a = parse_args(parser(), argv)
    shared: dict[str, Any] = {k: getattr(a, k) for k in SHARED if getattr(a, k) is not None}
    configs = {}
    for name, (prefix, _) in PREFIXES.items():
        cls = type(getattr(BuildConfig(), name))
        fields = {f.name for f in dataclasses.fields(cls)}
        configs[name] = from_flags(cls, a, prefix.replace("-", "_"),
                                   **{k: v for k, v in shared.items() if k in fields})
    stages = tuple(s.strip() for s in a.stages.split(",") if s.strip())
    return BuildConfig(model=a.model, task=task_spec(a), artifacts=a.artifacts,
                       reports=a.reports,
                       stages=stages, force=a.force, overlap=a.overlap, **configs), a


def task_spec(a: argparse.Namespace) -> TaskSpec:
    """The task flags. With --data, they declare the task (defaults for the rest); without, the
    task --artifacts was built for stays declared (a later `--stages hf` needs no repeat), each
    task flag given changing its field; with neither, the default task."""
    from common.task import declared_task

    given = {f.name: getattr(a, f.name) for f in dataclasses.fields(TaskSpec)
             if getattr(a, f.name, None) is not None}
    if "data" in given:
        return from_flags(TaskSpec, a)
    built = declared_task(Path(a.artifacts))
    if built is None:
        return from_flags(TaskSpec, a)
    try:
        return dataclasses.replace(built, **given)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"TaskSpec: {exc}") from None


@cli
def main(argv: list[str] | None = None) -> int:
    cfg, a = parse(argv)
    if a.families:
        from common.arch import families_table

        if a.readme:
            from common.manifest import write_text_atomic
            from common.reports import replace_block
            from common.variants import variants_table

            text = Path(a.readme).read_text()
            done = []
            for name, table in (("families", families_table()), ("variants", variants_table())):
                if f"<!-- {name}:start" in text:
                    text = replace_block(text, name, table)
                    done.append(name)
            if not done:
                raise ConfigError(f"{a.readme} has no families or variants markers")
            write_text_atomic(Path(a.readme), text)
            print(f"{' and '.join(done)} table(s) of {a.readme} updated")
        else:
            print(families_table())
        return 0
    if a.dry_run:
        for name, what in plan_all(cfg).items():
            print(f"[{what.split(':')[0]}] {name}{what[what.index(':'):] if ':' in what else ''}")
        return 0
    build_all(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
