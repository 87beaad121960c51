"""python -m engines [--model ...] [--data ...] [--stages baseline,onnx,...]"""

from __future__ import annotations

import argparse
import sys

from common.data import DEFAULT_DATASET
from common.modelsource import DEFAULT_MODEL
from engines.pipeline import STAGES, BuildConfig, build_all
from export.onnx_export import ExportConfig
from train.finetune import FinetuneConfig
from train.qat import QatConfig
from train.qlora import QloraConfig


def parse(argv: list[str] | None = None) -> BuildConfig:
    p = argparse.ArgumentParser(prog="python -m engines", description=__doc__)
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hub id or local dir (default: packaged MiniLM)")
    p.add_argument("--data", default=DEFAULT_DATASET, help="Hub dataset name or local folder of jsonl")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {STAGES}")
    p.add_argument("--force", action="store_true", help="rebuild even if current")
    d = FinetuneConfig()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--amp", default=d.amp, choices=["none", "fp16", "bf16"])
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--limit-train", type=int, default=0)
    p.add_argument("--limit-eval", type=int, default=0)
    qd = QloraConfig()
    p.add_argument("--qlora-rank", type=int, default=qd.rank)
    p.add_argument("--qlora-alpha", type=int, default=qd.alpha)
    p.add_argument("--qlora-dropout", type=float, default=qd.dropout)
    p.add_argument("--qlora-targets", default=qd.targets, choices=["attention", "attention+ffn"])
    p.add_argument("--qlora-lr", type=float, default=qd.lr)
    p.add_argument("--qlora-epochs", type=int, default=qd.epochs)
    p.add_argument("--qlora-no-double-quant", action="store_true")
    p.add_argument("--qlora-compute-dtype", default=qd.compute_dtype,
                   choices=["float32", "bfloat16", "float16"])
    qa = QatConfig()
    p.add_argument("--qat-lr", type=float, default=qa.lr)
    p.add_argument("--qat-epochs", type=float, default=qa.epochs, help="may be a fraction")
    p.add_argument("--qat-freeze-layers", type=int, default=qa.freeze_layers,
                   help="freeze the embeddings and the lowest N encoder layers")
    p.add_argument("--qat-calib-method", default=qa.calib_method, choices=["max", "percentile"])
    p.add_argument("--qat-no-attention-matmuls", action="store_true",
                   help="keep Q.K^T and softmax.V in FP32")
    p.add_argument("--qat-eval-every", type=int, default=qa.eval_every)
    a = p.parse_args(argv)
    ft = FinetuneConfig(model=a.model, data=a.data, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
                        max_length=a.max_length, warmup_ratio=a.warmup_ratio,
                        weight_decay=a.weight_decay, seed=a.seed, amp=a.amp, device=a.device,
                        threads=a.threads, limit_train=a.limit_train, limit_eval=a.limit_eval)
    stages = tuple(s.strip() for s in a.stages.split(",") if s.strip())
    return BuildConfig(model=a.model, data=a.data, artifacts=a.artifacts, stages=stages,
                       force=a.force, finetune=ft,
                       export=ExportConfig(max_length=a.max_length, data=a.data),
                       qlora=QloraConfig(model=a.model, data=a.data, rank=a.qlora_rank,
                                         alpha=a.qlora_alpha, dropout=a.qlora_dropout,
                                         targets=a.qlora_targets, lr=a.qlora_lr,
                                         epochs=a.qlora_epochs, double_quant=not a.qlora_no_double_quant,
                                         compute_dtype=a.qlora_compute_dtype,
                                         batch_size=a.batch_size, max_length=a.max_length,
                                         seed=a.seed, limit_train=a.limit_train,
                                         limit_eval=a.limit_eval),
                       qat=QatConfig(data=a.data, lr=a.qat_lr, epochs=a.qat_epochs,
                                     freeze_layers=a.qat_freeze_layers,
                                     calib_method=a.qat_calib_method,
                                     attention_matmuls=not a.qat_no_attention_matmuls,
                                     eval_every=a.qat_eval_every, batch_size=a.batch_size,
                                     seed=a.seed, device=a.device, threads=a.threads,
                                     limit_train=a.limit_train, limit_eval=a.limit_eval))


def main(argv: list[str] | None = None) -> int:
    build_all(parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
