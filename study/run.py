"""The study: each quantization method x policy on one task, measured in one process on one device.

Tasks: `classifier` (the fine-tuned baseline from artifacts/, test macro F1) and `lm` (any causal
LM, PTB perplexity). Per row: quality, weight bytes (what the model holds), peak inference memory
(weight bytes + the transient peak of one representative forward, counted from torch's allocator:
see study.memory), the process's resident high-water mark (Linux VmHWM, reset before each row;
kept for reference, it barely moves between rows), batch-1 latency. The selective policy keeps
the head in full precision plus the blocks a sensitivity pass finds worst (each block quantized
alone with the harshest method, absmax int4 per channel, scored on validation).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import check_ranges
from common.errors import ConfigError
from study.quantizers import QuantSpec

OURS = ("absmax-8-channel", "zeropoint-8-channel", "absmax-4-group", "zeropoint-4-group", "nf4-4-group")
BNB = ("int8", "fp4", "nf4", "nf4-dq")
# name patterns of the head Linears kept in full precision by the selective policy: every
# family's classification head (common.arch: pooler, pre_classifier, classifier.dense/out_proj)
HEADS = {"classifier": (r"^classifier(\.|$)", r"pooler", r"^pre_classifier$"), "lm": (r"lm_head",)}


@dataclass(frozen=True)
class StudyConfig:
    task: str = "classifier"
    model: str = ""  # lm: Hub id or local dir (e.g. gpt2); classifier: artifacts/baseline
    data: str = ""  # classifier: empty = the build's task; lm: PTB folder or Hub name
    artifacts: str = "artifacts"
    out: str = "reports"
    ours: tuple[str, ...] = OURS
    bnb: tuple[str, ...] = BNB
    policies: tuple[str, ...] = ("whole", "selective")
    group_size: int = 64
    keep_blocks: int = 1  # selective: this many most sensitive blocks stay full precision
    limit: int = 0  # classifier: first N test rows (0 = all); lm: first N tokens (0 = all)
    latency_samples: int = 100
    max_length: int = 1024  # lm window
    stride: int = 512
    threads: int = 0

    def __post_init__(self) -> None:
        if self.task not in HEADS:
            raise ConfigError(f"task must be one of {sorted(HEADS)}")
        check_ranges(self, group_size=">= 1", keep_blocks=">= 0", limit=">= 0",
                     latency_samples=">= 0", max_length=">= 2", stride=">= 1", threads=">= 0")
        for m in self.ours:
            spec(m, self.group_size)


def spec(name: str, group_size: int) -> QuantSpec:
    parts = name.split("-")
    if len(parts) != 3 or not parts[1].isdigit():
        raise ConfigError(f"quantizer {name!r} is not <method>-<bits>-<granularity>, e.g. "
                          f"absmax-8-channel; known: {', '.join(OURS)}")
    return QuantSpec(parts[0], int(parts[1]), parts[2], group_size)


class Task:
    """Loads a fresh model, scores it, times it; subclassed per task."""

    metric = "quality"
    higher_is_better = True
    probe_what = ""  # what probe() runs, for the report

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg

    def fresh(self) -> Any:
        raise NotImplementedError

    def quality(self, model: Any, split: str = "test") -> float:
        raise NotImplementedError

    def latency_ms(self, model: Any) -> float:
        raise NotImplementedError

    def probe(self, model: Any) -> None:
        """One representative forward for the transient-memory count."""
        raise NotImplementedError

    def blocks(self, model: Any) -> list[str]:
        """Name prefixes of the transformer blocks (for the sensitivity pass)."""
        names = {m.group(0) for n, _ in model.named_modules()
                 for m in [re.search(r"(layer|h)\.\d+\.", n)] if m}
        return sorted(names, key=lambda s: int(re.findall(r"\d+", s)[0]))


class ClassifierTask(Task):
    higher_is_better = True
    metric = "macro_f1"
    probe_what = "one forward of the first 64 test sentences, padded to the longest"

    def __init__(self, cfg: StudyConfig):
        super().__init__(cfg)
        from common.checkpoint import TextEncoder, baseline_dir
        from common.task import scoring_task

        self.ckpt = baseline_dir(Path(cfg.artifacts))
        te = TextEncoder.from_checkpoint(self.ckpt)
        task = scoring_task(Path(cfg.artifacts), cfg.data)
        self.splits = {}
        for s in ("validation", "test"):
            sp = task.split(s)
            sp = sp.head(cfg.limit) if cfg.limit else sp
            self.splits[s] = (te.encode_split(sp), np.asarray(sp.labels))
        self.names = list(te.input_names)

    def fresh(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(self.ckpt).eval()

    def quality(self, model, split: str = "test") -> float:
        from common.metrics import classification_metrics
        from common.torch_infer import torch_logits

        enc, y = self.splits[split]
        return classification_metrics(y, torch_logits(model, enc, self.names, 64).argmax(-1))["macro_f1"]

    def latency_ms(self, model) -> float:
        import torch

        from common.timing import time_each

        enc, _ = self.splits["test"]
        n = min(self.cfg.latency_samples, len(enc))
        feeds = ({k: torch.from_numpy(v) for k, v in enc.batch([i], self.names).items()}
                 for i in range(n))
        with torch.inference_mode():
            times, _ = time_each(lambda f: model(**f), feeds)
        return 1e3 * float(np.median(times))

    def probe(self, model) -> None:
        import torch

        enc, _ = self.splits["test"]  # the first 64 test sentences, padded to the longest
        feed = {k: torch.from_numpy(v) for k, v in enc.batch(list(range(min(64, len(enc)))),
                                                             self.names).items()}
        with torch.inference_mode():
            model(**feed)


class LmTask(Task):
    higher_is_better = False
    metric = "perplexity"
    probe_what = "one forward of one perplexity window (max_length tokens)"

    def __init__(self, cfg: StudyConfig):
        super().__init__(cfg)
        from transformers import AutoTokenizer

        from common.modelsource import from_pretrained
        from study.lm import load_ptb

        self.tok = from_pretrained(AutoTokenizer, cfg.model)
        self.text = {"test": load_ptb(cfg.data, "test"), "validation": load_ptb(cfg.data, "validation")}

    def fresh(self):
        from transformers import AutoModelForCausalLM

        from common.modelsource import from_pretrained

        return from_pretrained(AutoModelForCausalLM, self.cfg.model).eval()

    def quality(self, model, split: str = "test") -> float:
        from study.lm import perplexity

        return perplexity(model, self.tok, self.text[split], self.cfg.max_length, self.cfg.stride,
                          self.cfg.limit)["perplexity"]

    def latency_ms(self, model) -> float:
        import torch

        # one window of up to 128 tokens (never longer than the model's window)
        from common.timing import time_each

        ids = self.tok(self.text["test"][:4000], return_tensors="pt").input_ids[:, :min(128, self.cfg.max_length)]
        with torch.inference_mode():
            times, _ = time_each(model, [ids] * min(self.cfg.latency_samples, 20))
        return 1e3 * float(np.median(times))

    def probe(self, model) -> None:
        import torch

        # one full perplexity window
        ids = self.tok(self.text["test"][: 8 * self.cfg.max_length], return_tensors="pt").input_ids
        with torch.inference_mode():
            model(ids[:, : self.cfg.max_length])


def make_task(cfg: StudyConfig) -> Task:
    return ClassifierTask(cfg) if cfg.task == "classifier" else LmTask(cfg)


def sensitivity(task: Task, cfg: StudyConfig) -> dict[str, float]:
    """Quality loss (validation) when only one block is quantized with absmax int4 per channel."""
    from study.policy import apply_ours

    ref = task.quality(task.fresh(), "validation")
    harsh = QuantSpec("absmax", 4, "channel", cfg.group_size)
    out = {}
    for b in task.blocks(task.fresh()):
        m = task.fresh()
        apply_ours(m, harsh, keep=(rf"^(?!.*{re.escape(b)})",))  # every Linear outside b is kept
        q = task.quality(m, "validation")
        out[b.rstrip(".")] = (ref - q) if task.higher_is_better else (q - ref)
    return out


def selective_rule(task: Task, cfg: StudyConfig, sens: dict[str, float]) -> tuple[str, ...]:
    worst = sorted(sens, key=sens.get, reverse=True)[: cfg.keep_blocks]  # type: ignore[arg-type]
    return HEADS[cfg.task] + tuple(rf"{re.escape(b)}\." for b in worst)


def nf4_reconstruction(model: Any, group_size: int) -> dict[str, float]:
    """Our hand-written NF4 and bitsandbytes' NF4 on the same weights (every Linear whose size is
    a multiple of the block): mean and max |w - dequant(quant(w))|."""
    import bitsandbytes.functional as bf

    from study.policy import as_linear, select
    from study.quantizers import dequantize, quantize

    s = QuantSpec("nf4", 4, "group", group_size)
    err: dict[str, list[float]] = {"ours_mean": [], "ours_max": [], "bnb_mean": [], "bnb_max": []}
    for n in select(model):
        w = as_linear(model.get_submodule(n)).weight.detach().float()
        if w.shape[1] % group_size:
            continue
        q, st = bf.quantize_4bit(w, blocksize=group_size, quant_type="nf4", compress_statistics=False)
        for who, d in (("ours", dequantize(quantize(w, s))), ("bnb", bf.dequantize_4bit(q, st))):
            e = (d - w).abs()
            err[f"{who}_mean"].append(float(e.mean()))
            err[f"{who}_max"].append(float(e.max()))
    out = {k: float(np.mean(v)) if k.endswith("mean") else float(np.max(v)) for k, v in err.items()}
    return {**out, "layers": len(err["ours_mean"]), "block": group_size}


def run_study(cfg: StudyConfig) -> dict:
    import torch

    from common.env import cpu_device, peak_rss_mb, reset_peak_rss, versions
    from study.memory import peak_transient_bytes
    from study.policy import apply_bnb, apply_ours, select, weight_bytes

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = make_task(cfg)
    sens = sensitivity(task, cfg) if "selective" in cfg.policies else {}
    rules = {"whole": (), "selective": selective_rule(task, cfg, sens)}
    rows: list[dict[str, Any]] = []

    def measure(label: str, family: str, policy: str, apply) -> None:
        model = task.fresh()
        names = apply(model, rules[policy]) if apply else []
        total = len(select(task.fresh()))
        reset = reset_peak_rss()
        q = task.quality(model)
        wb = weight_bytes(model)
        transient = peak_transient_bytes(lambda: task.probe(model))
        rows.append({"method": label, "family": family, "policy": policy, task.metric: q,
                     "weight_bytes": wb, "latency_ms_b1": task.latency_ms(model),
                     "peak_transient_bytes": transient, "peak_inference_bytes": wb + transient,
                     "peak_rss_mb": peak_rss_mb() if reset else None,
                     "quantized_layers": len(names), "linear_layers": total})
        print(f"  {label:>22} {policy:>9}: {task.metric} {q:.4f}, {wb / 1e6:.1f} MB weights, "
              f"peak {(wb + transient) / 1e6:.1f} MB, {rows[-1]['latency_ms_b1']:.2f} ms")

    measure("fp32", "reference", "whole", None)
    for policy in cfg.policies:
        for name in cfg.ours:
            s = spec(name, cfg.group_size)
            measure(s.name, "ours", policy, lambda m, keep, s=s: apply_ours(m, s, keep))
        for fmt in cfg.bnb:
            measure(f"bnb-{fmt}", "bitsandbytes", policy, lambda m, keep, f=fmt: apply_bnb(m, f, keep))
    return {"task": cfg.task, "metric": task.metric, "config": asdict(cfg), "device": cpu_device(),
            "probe": task.probe_what,
            "threads": torch.get_num_threads(), "sensitivity": sens,
            "selective_keep": list(rules["selective"]), "rows": rows, "versions": versions(),
            "nf4_reconstruction": nf4_reconstruction(task.fresh(), cfg.group_size),
            **({"made_by": _baseline_made_by(cfg)} if cfg.task == "classifier" else {})}


def _baseline_made_by(cfg: StudyConfig) -> dict[str, Any]:
    from common.manifest import Manifest

    return Manifest(Path(cfg.artifacts)).stamp("baseline")
