"""The student: a shallower copy of the fine-tuned baseline, distilled from it.

INT8 makes the same work cheaper and stops where what INT8 does not touch (LayerNorm, GELU,
softmax, quantize ops, dispatch) bounds the whole; removing layers removes all of that at once.
The student keeps a subset of the baseline's encoder layers (every other one by default, the top
one always among them, since the head was trained on its output: DistilBERT's and TinyBERT's
initialisation by layer selection), with the baseline's embeddings and head, and is trained on
the training split against the FP32 baseline's logits (soft targets at a temperature, plus the
hard labels, the baseline's class weights on those), with model selection on validation macro F1.

The teacher's logits are computed once by their own build step (`teacher_logits`) and read here,
so the teacher costs nothing per step and a new student recipe does not recompute them. Layers
are found through the family spec (common.arch.layer_stack), so every encoder family works the
same way. The saved student is an ordinary save_pretrained folder with a recipe.json like the
baseline's: every later stage (ONNX export, fusion, static INT8) takes it as it takes the
baseline.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import check_ranges, doc, recipe, run_only
from common.errors import ConfigError
from train.loop import (
    TrainRun,
    adamw,
    bucketed_batches,
    resolve_device,
    train_step,
    train_val_splits,
    validation_row,
    write_recipe,
)


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher's logits: the FP32 baseline as it was fine-tuned, in FP32 (no knobs)."""

    batch_size: int = 128
    device: str = run_only("auto", "auto | cpu | cuda")

    def __post_init__(self) -> None:
        check_ranges(self, batch_size=">= 1")

    def resolved_device(self) -> str:
        return resolve_device(self.device)


@dataclass(frozen=True)
class StudentConfig(TrainRun):
    layers: str = doc("every-other", "the baseline's encoder layers the student keeps: "
                      "every-other (the top one and every second one below it) | a comma list "
                      "of layer indices, e.g. 0,2,5")
    epochs: int = 3
    lr: float = 1e-4
    warmup_ratio: float = 0.06
    temperature: float = doc(2.0, "softening of teacher and student logits in the distillation "
                             "loss")
    distill: float = doc(0.5, "weight of the distillation loss (1 - it: the label loss)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, epochs=">= 1", lr="> 0", warmup_ratio="in [0, 1]", temperature="> 0",
                     distill="in [0, 1]")
        if self.layers != "every-other":
            try:
                picked = [int(x) for x in self.layers.split(",") if x.strip()]
            except ValueError:
                picked = []
            if not picked or any(i < 0 for i in picked) or len(set(picked)) != len(picked):
                raise ConfigError(f"--student-layers {self.layers!r}: every-other, or distinct "
                                  "layer indices separated by commas (e.g. 1,3,5)")


def kept_layers(spec: str, n_layers: int) -> list[int]:
    """The baseline's layer indices the student keeps, ascending."""
    if spec == "every-other":
        return list(range(n_layers - 1, -1, -2))[::-1]
    picked = sorted(int(x) for x in spec.split(",") if x.strip())
    if picked[-1] >= n_layers:
        raise ConfigError(f"--student-layers {spec}: the baseline has layers 0..{n_layers - 1}")
    if len(picked) == n_layers:
        raise ConfigError(f"--student-layers {spec} keeps every layer: a student keeps fewer")
    return picked


def shallow_copy(model: Any, keep: list[int]) -> Any:
    """`model` with only the encoder layers `keep` (in that order), its embeddings and head
    unchanged; the config says the new depth, so save_pretrained / from_pretrained round-trip.
    Layers are found through the family spec, not a BERT attribute path."""
    import torch

    from common.arch import family_of, layer_stack

    stack = layer_stack(model)
    parent_name, _, attr = family_of(model).layers.rpartition(".")
    parent = model.base_model.get_submodule(parent_name) if parent_name else model.base_model
    setattr(parent, attr, torch.nn.ModuleList([stack[i] for i in keep]))
    model.config.num_hidden_layers = len(keep)
    for i, layer in enumerate(layer_stack(model)):  # per-layer indices some families keep
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = i
    return model


def teacher_logits(baseline: Path, data: str | Path, out: Path, device: str = "cpu",
                   batch_size: int = 128) -> dict[str, Any]:
    """The FP32 baseline's logits on every training row (the build step `teacher-logits`), with
    the rows' fingerprint so a student never trains on another task's logits."""
    from transformers import AutoModelForSequenceClassification

    from common.checkpoint import TextEncoder
    from common.task import load_split
    from common.torch_infer import torch_logits

    te = TextEncoder.from_checkpoint(baseline)
    train = load_split(data, "train")
    model = AutoModelForSequenceClassification.from_pretrained(baseline).to(device).eval()
    logits = torch_logits(model, te.encode_split(train), te.input_names, batch_size=batch_size,
                          device=device, progress="teacher logits")
    with open(out, "wb") as f:  # np.savez on a handle: no ".npz" appended to the temp name
        np.savez(f, train=logits.astype(np.float32), fingerprint=np.array(train.fingerprint))
    return {"rows": len(train), "classes": int(logits.shape[1]),
            "train_accuracy": float((logits.argmax(-1) == np.asarray(train.labels)).mean())}


def read_teacher(path: Path, train_fingerprint: str, rows: int) -> np.ndarray:
    """The first `rows` teacher logits, refused if they were computed on other rows."""
    from common.manifest import ArtifactError

    with np.load(path) as z:
        if str(z["fingerprint"]) != train_fingerprint:
            raise ArtifactError(f"{path} holds the logits of other training rows; rebuild it "
                                "with `make engines`")
        return z["train"][:rows]


def train_student(cfg: StudentConfig, baseline: Path, teacher: Path, out_dir: Path) -> dict:
    """Make the student from the baseline, distil it on the training split, keep the epoch with
    the best validation macro F1, save it to out_dir (save_pretrained + tokenizer + recipe.json)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    from common.arch import layer_stack
    from common.checkpoint import TextEncoder, read_recipe, trained_with
    from train.finetune import class_weights, param_groups

    device = cfg.start()
    meta = read_recipe(baseline)
    te = TextEncoder.from_checkpoint(baseline)
    task, full_train, val = train_val_splits(cfg.data, 0, cfg.limit_eval)
    train = full_train.head(cfg.limit_train) if cfg.limit_train else full_train
    t_logits = torch.from_numpy(read_teacher(teacher, full_train.fingerprint, len(train)))

    with torch.random.fork_rng():  # loading must not move the RNG the student's dropout draws on
        model = AutoModelForSequenceClassification.from_pretrained(baseline)
    n_layers = len(layer_stack(model))
    keep = kept_layers(cfg.layers, n_layers)
    model = shallow_copy(model, keep).to(device)
    names = list(te.input_names)
    train_enc, val_enc = te.encode_split(train), te.encode_split(val)
    y = torch.tensor(train.labels)

    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    groups = param_groups(model, cfg.weight_decay)
    for g in groups:
        g["lr"] = cfg.lr * g.pop("lr_scale")
    opt = adamw(groups, cfg.lr, device)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    # the baseline's loss on the hard labels: its class weights, as QAT keeps them
    loss_weights = trained_with(meta, "class_weights", "none")
    weights = class_weights(loss_weights, np.asarray(train.labels), device, task.num_labels)
    params = list(model.parameters())

    first = validation_row(model, val_enc, names, val.labels, device, 0, float("nan"), 0.0,
                           task.num_labels)
    print(f"student ({len(keep)} of {n_layers} layers: {keep}) before training: validation macro "
          f"F1 {first['val_macro_f1']:.4f}")
    history, best_f1, best_state, t0 = [first], -1.0, None, time.time()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        bar = tqdm(bucketed_batches(train_enc, cfg.batch_size, rng),
                   desc=f"student epoch {epoch}/{cfg.epochs}")
        running = 0.0
        for step, b in enumerate(bar, start=1):
            loss = train_step(model, train_enc.batch(b, names), y[b], device, opt, sched, params,
                              f"student epoch {epoch} step {step} (lower --student-lr)", weights,
                              teacher=(t_logits[b], cfg.distill, cfg.temperature))
            running = 0.98 * running + 0.02 * loss if step > 1 else loss
            bar.set_postfix(loss=f"{running:.4f}")
        row = validation_row(model, val_enc, names, val.labels, device, epoch, running,
                             (time.time() - t0) / 60, task.num_labels)
        history.append(row)
        print(f"student epoch {epoch}: validation macro F1 {row['val_macro_f1']:.4f}")
        if row["val_macro_f1"] > best_f1:
            best_f1 = row["val_macro_f1"]
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    model.to("cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    te.tokenizer.save_pretrained(out_dir)
    best = max(history[1:], key=lambda h: h["val_macro_f1"])
    out = {"config": recipe(cfg), "base_model": meta.get("base_model"),
           "model_type": meta.get("model_type"), "max_length": meta["max_length"],
           "input_names": names, "task": meta.get("task"), "layers_kept": keep,
           "class_weights": loss_weights,
           "baseline_layers": n_layers, "train_rows": len(train), "validation_rows": len(val),
           "baseline_best_val_macro_f1": meta.get("best_val_macro_f1"),
           "best_epoch": best["epoch"], "best_val_macro_f1": best_f1, "history": history,
           "params": int(sum(p.numel() for p in model.parameters())),
           "train_minutes": (time.time() - t0) / 60, "device": device}
    write_recipe(out_dir, out)
    return out
