"""Does an INT8 graph answer differently on a CPU without VNNI? MLAS's U8S8 products saturate there.

    python -m evaluate --backend ort --saturation default   (or a comma list of ort variants)

ONNX Runtime's CPU kernels (MLAS) multiply U8 activations by S8 weights. With VNNI (vpdpbusd) the
four products of a 4-byte group are summed in 32 bits: exact. Without it MLAS uses vpmaddubsw, which
adds two u8 x s8 products into a signed 16-bit lane and clips the sum at +-32767, so the same file
can give other answers on an older CPU. MLAS's U8U8 kernel widens both operands to 16 bit before
multiplying and cannot saturate. This check runs each graph as shipped and its exact twin (the same
file with every S8 weight stored as U8: w + 128 with zero point + 128, the same integers) on the
split at batch 1, and reports how many answers differ, how far the logits move, and both macro F1s
with a paired bootstrap interval. On a VNNI CPU the two must agree (that checks the rewrite);
without VNNI the difference is what saturation does to this model. Writes
<out>/saturation-ort.{json,md}.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.config import check_ranges, doc

# op -> (index of its INT8 weight input, of that weight's zero point, of its scale or None)
WEIGHT_INPUTS = {"DequantizeLinear": (0, 2, 1), "MatMulIntegerToFloat": (1, 5, 3),
                 "DynamicQuantizeMatMul": (1, 3, 2), "MatMulInteger": (1, 3, None),
                 "QAttention": (1, 7, 4)}

def default_variants() -> tuple[str, ...]:
    """The registry's "saturation" list: the CPU INT8 graphs (a graph whose weights are already U8,
    as QAT's CPU flavour built on a CPU without VNNI, is reported as not checkable)."""
    from common.variants import listed

    return tuple(v.variant for v in listed("saturation", "ort"))


@dataclass(frozen=True)
class SaturationConfig:
    variants: tuple[str, ...] = field(default_factory=default_variants)
    data: str = ""  # the rows: empty = the build's task (common.task.scoring_task)
    split: str = "test"
    sentences: int = doc(0, "sentences checked (the first N of the split; 0: all)")
    threads: int = 0
    artifacts: str = "artifacts"
    out: str = "reports"

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("give at least one variant to check")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants repeat: {self.variants}")
        check_ranges(self, sentences=">= 0", threads=">= 0")


def exact_twin(model: Any) -> int:
    """Rewrite, in place, every INT8 weight initializer read by an INT8 product (or by the
    DequantizeLinear in front of one) as UINT8 w + 128 with zero point + 128: the same values,
    computed by MLAS's non-saturating U8U8 kernels. Returns how many weights it rewrote."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    # zero points given by Constant nodes (as torch's exporter writes them, the QAT graph's)
    consts = {o: numpy_helper.to_array(at.t) for n in g.node if n.op_type == "Constant"
              for at in n.attribute if at.name == "value" for o in n.output}
    made: dict[str, str] = {}  # old initializer -> its U8 form (weights and zero points are shared)

    def u8(name: str, values: np.ndarray) -> str:
        if name not in made:
            new = numpy_helper.from_array((values.astype(np.int16) + 128).astype(np.uint8),
                                          f"{name}_u8")
            g.initializer.append(new)
            made[name] = new.name
        return made[name]

    count = 0
    for node in g.node:
        if node.op_type not in WEIGHT_INPUTS:
            continue
        wi, zi, si = WEIGHT_INPUTS[node.op_type]
        w = inits.get(node.input[wi]) if len(node.input) > wi else None
        if w is None or w.data_type != TensorProto.INT8:
            continue  # an activation, or weights that are U8 already
        zname = node.input[zi] if len(node.input) > zi else ""
        if zname and zname not in inits and zname not in consts:
            continue  # a zero point computed at run time: not a stored weight
        if zname:
            zp = numpy_helper.to_array(inits[zname]) if zname in inits else consts[zname]
        else:  # absent means 0, shaped like the scale (per channel or per tensor)
            scale = inits.get(node.input[si]) if si is not None else None
            zp = np.zeros(numpy_helper.to_array(scale).shape if scale is not None else (),
                          np.int8)
            zname = f"{node.name or node.output[0]}_zero_point"
        node.input[wi] = u8(w.name, numpy_helper.to_array(w))
        while len(node.input) <= zi:
            node.input.append("")
        node.input[zi] = u8(zname, zp)
        count += 1
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return count


def logits_of(runner: Any, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([runner.infer(f) for f in feeds]).astype(np.float64)


NOTHING_TO_CHECK = ("not checked: its INT8 weights are already U8 (as QAT's CPU flavour is when built "
                    "on a CPU without VNNI), so its products run in the U8U8 kernels that cannot "
                    "saturate; there is no S8 weight to rewrite and no answer that could differ")


def check_saturation(cfg: SaturationConfig) -> dict[str, Any]:
    import onnx
    from tqdm import tqdm

    from common.checkpoint import baseline_encoder
    from common.env import cpu_device, int8_weights_for_this_cpu, versions
    from common.manifest import Manifest
    from common.metrics import bootstrap_weights, classification_metrics, paired_delta_ci
    from common.task import scoring_task
    from common.variants import find_variant
    from deploy.factories import default_threads
    from deploy.ort_runner import OrtRunner

    artifacts = Path(cfg.artifacts)
    threads = cfg.threads or default_threads()
    man = Manifest(artifacts)
    task = scoring_task(artifacts, cfg.data)
    split = task.split(cfg.split)
    n = min(cfg.sentences or len(split), len(split))
    te = baseline_encoder(artifacts)
    enc = te.encode_split(split.head(n))
    feeds = [enc.batch([i], te.input_names) for i in range(n)]
    y = np.asarray(split.labels[:n])
    w = bootstrap_weights(n)
    arts = {v: find_variant("ort", v).artifact for v in cfg.variants}
    rows = []
    with tempfile.TemporaryDirectory(prefix="saturation-") as tmp:
        for v in tqdm(cfg.variants, desc="shipped vs exact twin", leave=False):
            path = man.verify(arts[v])
            model = onnx.load(str(path))
            rewritten = exact_twin(model)
            if rewritten == 0:  # nothing to compare: its products are the exact U8U8 ones
                rows.append({"variant": v, "weights_rewritten": 0, "skipped": NOTHING_TO_CHECK})
                continue
            twin_path = Path(tmp) / f"{v}-exact.onnx"
            onnx.save(model, str(twin_path))
            with OrtRunner(path, tuple(te.input_names), threads, variant=v) as r:
                shipped = logits_of(r, feeds)
            with OrtRunner(twin_path, tuple(te.input_names), threads, variant=v) as r:
                exact = logits_of(r, feeds)
            ps, pe = shipped.argmax(1), exact.argmax(1)
            d = np.abs(shipped - exact)
            rows.append({
                "variant": v, "weights_rewritten": rewritten,
                "predictions_differ": int((ps != pe).sum()),
                "right_only_shipped": int(((ps == y) & (pe != y)).sum()),
                "right_only_exact": int(((pe == y) & (ps != y)).sum()),
                "max_abs_dlogit": float(d.max()), "mean_abs_dlogit": float(d.mean()),
                "macro_f1_shipped": classification_metrics(y, ps, task.labels)["macro_f1"],
                "macro_f1_exact": classification_metrics(y, pe, task.labels)["macro_f1"],
                "delta_f1": paired_delta_ci(w, y, ps, pe)})
    return {"backend": "ort", "config": asdict(cfg), "threads": threads, "sentences": n,
            "device": cpu_device(), "rows": rows, "versions": versions(),
            # the project's one rule for where U8 x S8 saturates (it also picks QAT's weights)
            "u8s8_saturates": int8_weights_for_this_cpu() == "u8",
            "made_by": {v: man.stamp(arts[v]) for v in cfg.variants}}


def markdown(r: dict) -> str:
    from evaluate.op_profile import kernel_note

    dev = r["device"]
    verdict = ("This CPU's U8S8 products saturate (x86 without VNNI): the differences are what "
               "saturation does to this model; a CPU with VNNI computes the exact column."
               if r["u8s8_saturates"] else
               "This CPU's U8S8 sums are exact, so every row must show 0 differences.")
    lines = ["# Does the answer depend on the CPU? U8S8 saturation", "",
             f"{dev.get('name')}, {r['threads']} threads, batch 1, the first {r['sentences']} "
             f"{r['config']['split']} sentences. Each graph as shipped against its exact twin (every "
             "S8 weight stored as U8 with zero point + 128: the same integers, run in MLAS's "
             "U8U8 kernels, which cannot saturate). " + kernel_note(dev) + " " + verdict, "",
             "| variant | S8 weights rewritten | answers differ | right only shipped | right only "
             "exact | max abs dlogit | mean abs dlogit | macro F1 shipped | macro F1 exact | "
             "delta pt [95% CI] |", "|" + "---|" * 10]
    for x in (x for x in r["rows"] if "skipped" not in x):
        d = x["delta_f1"]
        lines.append(f"| {x['variant']} | {x['weights_rewritten']} | {x['predictions_differ']} | "
                     f"{x['right_only_shipped']} | {x['right_only_exact']} | "
                     f"{x['max_abs_dlogit']:.3f} | {x['mean_abs_dlogit']:.4f} | "
                     f"{x['macro_f1_shipped']:.4f} | {x['macro_f1_exact']:.4f} | "
                     f"{100 * d['delta']:+.2f} [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}] |")
    lines += [""] + [f"- {x['variant']}: {x['skipped']}." for x in r["rows"] if "skipped" in x]
    vers = ", ".join(f"{k} {v}" for k, v in sorted(r["versions"].items()))
    lines += ["", f"Versions: {vers}.", ""]
    return "\n".join(lines)


def write_saturation(r: dict, out: Path) -> dict[str, Path]:
    from common.reports import write_report

    return write_report(out, f"saturation-{r['backend']}", r, markdown(r))
