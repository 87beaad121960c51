"""The steps of the `student` stage (train/student.py says what a student is): the teacher's
logits, the distilled student, and the student through the same later steps as the baseline,
each with the baseline's step function pointed at the student's checkpoint: its FP16 copy (the
GPU rows), its FP32 ONNX export (validated against it in PyTorch), the fused graph, the static
INT8 recipe ort/ptq's search chose on the fused graph (ptq-fused) and, for TensorRT, with S8
activations on the plain graph."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engines.pipeline import Builder, Step, fixed
from engines.steps import (
    fp16_checkpoint,
    fused_graph_step,
    onnx_export_step,
    ptq_fused_graph_step,
    ptq_s8_graph_step,
)


def teacher_step(b: Builder) -> Step:
    """The FP32 baseline's logits on the training rows, computed once for every student recipe."""
    from train.student import teacher_logits

    t = b.cfg.teacher
    return Step("teacher-logits", fixed("teacher/logits.npz"), t, ("baseline", "task"), dict,
                lambda tmp: teacher_logits(b.path("baseline"), b.path("task"), tmp,
                                           t.resolved_device(), t.batch_size))


def student_step(b: Builder) -> Step:
    from train.student import train_student

    c = b.cfg.student

    def build(tmp: Path) -> dict[str, Any]:
        r = train_student(c, b.path("baseline"), b.path("teacher-logits"), tmp)
        return {k: r[k] for k in ("layers_kept", "baseline_layers", "best_val_macro_f1",
                                  "baseline_best_val_macro_f1", "best_epoch", "params",
                                  "train_minutes", "class_weights")}

    return Step("student", fixed("student"), c, ("baseline", "teacher-logits", "task"), dict,
                build)


def student_fp16_step(b: Builder) -> Step:
    return fp16_checkpoint(b, "student-fp16", "torch/student-fp16", "student")


def student_onnx_step(b: Builder) -> Step:
    return onnx_export_step(b, "onnx-student", "onnx/student.onnx", "student")


def student_fused_step(b: Builder) -> Step:
    return fused_graph_step(b, "onnx-student-fused", "onnx/student-fused.onnx", "onnx-student",
                            "student")


def student_ptq_fused_step(b: Builder) -> Step:
    return ptq_fused_graph_step(b, "onnx-student-ptq-fused", "onnx/student-ptq-fused.onnx",
                                "onnx-student-fused", "student")


def student_ptq_s8_step(b: Builder) -> Step:
    return ptq_s8_graph_step(b, "onnx-student-ptq-s8", "onnx/student-ptq-s8.onnx",
                             "onnx-student", "student")


FACTORIES: tuple[Callable[[Builder], Step], ...] = (teacher_step, student_step, student_fp16_step, student_onnx_step,
             student_fused_step, student_ptq_fused_step, student_ptq_s8_step)
