"""python -m study --task classifier [--artifacts artifacts --data ../shared/data/emotion]
python -m study --task lm --model gpt2 --data ../shared/data/ptb [--stride 512 --max-length 1024]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.errors import cli
from study.run import BNB, OURS, StudyConfig, run_study


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="classifier", choices=["classifier", "lm"])
    p.add_argument("--model", default="", help="lm: Hub id or local dir of a causal LM")
    p.add_argument("--data", default="", help="classifier: the rows to score (empty: the build's "
                   "task); lm: PTB folder or Hub name (required)")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--out", default="reports")
    p.add_argument("--ours", default=",".join(OURS), help=f"comma list of {OURS}")
    p.add_argument("--bnb", default=",".join(BNB), help=f"comma list of {BNB} (empty: none)")
    p.add_argument("--policies", default="whole,selective")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--keep-blocks", type=int, default=1)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--latency-samples", type=int, default=100)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--stride", type=int, default=512)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.task == "lm" and not a.model:
        p.error("--task lm needs --model (e.g. gpt2, or a local folder)")
    if a.task == "lm" and not a.data:
        p.error("--task lm needs --data (a PTB folder, e.g. ../shared/data/ptb, or a Hub name)")

    def items(s: str) -> tuple[str, ...]:
        return tuple(x for x in s.split(",") if x)

    cfg = StudyConfig(task=a.task, model=a.model, data=a.data, artifacts=a.artifacts, out=a.out,
                      ours=items(a.ours), bnb=items(a.bnb), policies=items(a.policies),
                      group_size=a.group_size, keep_blocks=a.keep_blocks, limit=a.limit,
                      latency_samples=a.latency_samples, max_length=a.max_length,
                      stride=a.stride, threads=a.threads)
    from study.report import write_study

    paths = write_study(run_study(cfg), Path(a.out))
    print(f"study -> {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
