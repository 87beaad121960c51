"""The model repository for the NGC `tritonserver` image: the one requested variant on the
`onnxruntime` (ONNX) or `tensorrt` (plan) backend, a Python `tokenizer` model (the `tokenizers`
library only; text pairs for a pair task) and a Python `postprocess` model (the task's label
names, labels.json), chained by an `ensemble` (`classifier` by default).

Everything is checked before anything is written (the artifact is built and current, the backend
can serve it, the config fits the graph's real inputs and the engine's profile), the repository
is written to a temporary folder and swapped in whole, so a refused run leaves the old repository
as it was and a stale model from an earlier run never stays behind (tritonserver exits on any
model that fails to load).

Batching that really happens: Triton's dynamic batcher joins requests only when their shapes are
equal, and each tokenized request has its own length. The tokenizer model batches the requests
waiting for it and pads all of them to one bucket width (a power of two from 8 up to the max
length), so requests of different lengths reach the model with equal shapes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from common.buckets import Buckets
from common.checkpoint import baseline_meta
from common.errors import UserError
from common.manifest import Manifest, atomic_output
from common.task import Task, task_of
from deploy.factories import build_buckets, engine_profile, find_variant
from deploy.triton_repo import (
    HERE,
    PROJECT_ROOT,
    ServeConfig,
    batching,
    contract_io,
    text_inputs,
    triton_pb,
    write_config,
)

TRITON_BACKEND = {"ort": ("onnxruntime", "model.onnx"), "trt": ("tensorrt", "model.plan")}
ONNX_TO_TRITON = {"int64": "TYPE_INT64", "int32": "TYPE_INT32", "float32": "TYPE_FP32"}


class RepoError(UserError, ValueError):
    """The requested repository cannot be served as asked."""


def check_request(sc: ServeConfig, man: Manifest, gpu: bool) -> dict[str, Any]:
    """Everything that would make the NGC server refuse the model, said before writing."""
    if sc.backend not in TRITON_BACKEND:
        raise RepoError(f"{sc.backend}/{sc.variant} runs in PyTorch, which the NGC repository does "
                        "not serve (onnxruntime and tensorrt backends only): serve it with "
                        "`python -m deploy serve`, or pick an ort or trt variant")
    from common.variants import servable

    ngc = servable("ngc", sc.backend)
    if sc.variant not in {v.variant for v in ngc}:
        raise RepoError(f"{sc.backend}/{sc.variant} is not served by the NGC repository; "
                        f"servable: {', '.join(v.key for v in ngc)}")
    art = find_variant(sc.backend, sc.variant).artifact
    path = man.verify(art)
    facts: dict[str, Any] = {"artifact": art, "path": path}
    if sc.backend == "trt":
        if not gpu:
            raise RepoError("TensorRT models run on GPUs only (Triton's tensorrt backend refuses "
                            "KIND_CPU): drop --cpu, or serve an ort variant on CPU")
        e = man.get(art)
        from common.trt import check_plan_for_server, triton_trt_version

        # the Triton image loads only plans of its own TensorRT version
        check_plan_for_server(str(e.get("device", {}).get("tensorrt")), triton_trt_version(), path)
        profile = engine_profile(e, art)
        if sc.max_batch > profile.max_batch:
            raise RepoError(f"--max-batch {sc.max_batch} is above the engine's profiles (max batch "
                            f"{profile.max_batch}); the tensorrt backend would refuse the model. "
                            f"Use --max-batch {profile.max_batch} or rebuild with a larger batch "
                            "bucket: `python -m engines --trt-profile-buckets-batches "
                            f"{','.join(map(str, (*profile.buckets.batches, sc.max_batch)))}`")
        max_length = int(baseline_meta(man.root)["max_length"])
        if not profile.min_seq <= 1 or max_length > profile.max_seq:
            raise RepoError(f"the engine's profile admits sequences of {profile.min_seq}.."
                            f"{profile.max_seq} tokens; served texts take 1..{max_length}: rebuild "
                            "with a profile from 1 to the max length")
        facts["profile"] = profile
    else:
        from common.onnx_graph import graph_inputs, graph_outputs

        facts["inputs"] = graph_inputs(path)
        if graph_outputs(path) != ["logits"]:
            raise RepoError(f"{path} outputs {graph_outputs(path)}, the repository expects "
                            "['logits']: rebuild it with `make engines`")
    return facts


def _onnx_input_types(path: Path) -> dict[str, str]:
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    return {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name
            for i in g.input}


def model_config(pb: Any, name: str, sc: ServeConfig, gpu: bool, names: list[str],
                 types: dict[str, str], num_labels: int, profile: Any = None) -> Any:
    backend, filename = TRITON_BACKEND[sc.backend]
    cfg = pb.ModelConfig(name=name, backend=backend, max_batch_size=sc.max_batch,
                         default_model_filename=filename)
    for n in names:  # variable sequence length: dims [-1]
        cfg.input.add(name=n, data_type=getattr(pb, ONNX_TO_TRITON[types.get(n, "int64")]),
                      dims=[-1])
    cfg.output.add(name="logits", data_type=pb.TYPE_FP32, dims=[num_labels])
    batching(cfg, sc)
    kind = pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU
    group = cfg.instance_group.add(count=sc.instances, kind=kind)
    if sc.backend == "trt" and profile is not None:
        # every profile listed: Triton then picks, per batch, the one that admits its shapes and
        # is tuned closest to them (unlisted, only profile 0 - batch 1 - would be used)
        group.profile.extend(profile.triton_profiles())
    if sc.backend == "ort" and sc.threads:  # per instance; unset, every instance uses every core
        cfg.parameters["intra_op_thread_count"].string_value = str(sc.threads)
        cfg.parameters["inter_op_thread_count"].string_value = "1"
    return cfg


def write_ngc_repo(out: Path, artifacts: Path, sc: ServeConfig, gpu: bool = True) -> dict[str, Any]:
    """Check, then write the whole repository into `out` (replacing what was there)."""
    pb = triton_pb()
    artifacts = Path(artifacts)
    man = Manifest(artifacts)
    facts = check_request(sc, man, gpu)
    meta = baseline_meta(artifacts)
    task = task_of(artifacts)
    names = list(meta["input_names"])
    if sc.backend == "ort" and facts["inputs"] != names:
        raise RepoError(f"{facts['path']} takes inputs {facts['inputs']}, the tokenizer writes "
                        f"{names}: rebuild it with `make engines`")
    types = _onnx_input_types(facts["path"]) if sc.backend == "ort" else {}
    target = f"{sc.model_name}_{sc.backend}_{sc.variant.replace('-', '_')}"
    with atomic_output(Path(out)) as tmp:
        folder = tmp / target
        (folder / "1").mkdir(parents=True)
        shutil.copy(facts["path"], folder / "1" / TRITON_BACKEND[sc.backend][1])
        write_config(model_config(pb, target, sc, gpu, names, types, task.num_labels,
                                  facts.get("profile")), folder)
        # the lengths the tokenizer pads to: the served engine's own table (TensorRT), else the
        # build's (deploy.factories.build_buckets), the table its engines and graphs share
        buckets = facts["profile"].buckets if "profile" in facts else build_buckets(man)
        write_tokenizer(pb, tmp / "tokenizer", artifacts, man, sc, names, int(meta["max_length"]),
                        task.pair, buckets)
        write_postprocess(pb, tmp / "postprocess", sc, task)
        write_ensemble(pb, tmp / sc.model_name, sc, target, names, task)
    return {"models": {f"{sc.backend}/{sc.variant}": target}, "ensemble": sc.model_name,
            "serves": target, "dynamic_batching": sc.dynamic_batching}


def write_tokenizer(pb: Any, tok: Path, artifacts: Path, man: Manifest, sc: ServeConfig,
                    names: list[str], max_length: int, pair: bool, buckets: Buckets) -> None:
    """tokenizer.json + settings + the input checks shared with the local server (copied beside
    it in project/: common/feeds.py and deploy/service.py import numpy only)."""
    (tok / "1" / "project" / "common").mkdir(parents=True)
    (tok / "1" / "project" / "deploy").mkdir(parents=True)
    shutil.copy(HERE / "triton_tokenizer.py", tok / "1" / "model.py")
    baseline = man.verify("baseline")  # the tokenizer served is the one the variant was made with
    shutil.copy(baseline / "tokenizer.json", tok / "1" / "tokenizer.json")
    for rel in ("common/__init__.py", "common/errors.py", "common/feeds.py",
                "common/buckets.py", "common/probs.py", "deploy/service.py"):
        shutil.copy(PROJECT_ROOT / rel, tok / "1" / "project" / rel)
    (tok / "1" / "project" / "deploy" / "__init__.py").write_text("")
    from common.modelsource import load_tokenizer

    pad = load_tokenizer(baseline).pad_token_id
    (tok / "1" / "settings.json").write_text(json.dumps(
        {"max_length": max_length, "input_names": names, "pad_id": int(pad or 0), "pair": pair,
         "buckets": dataclasses.asdict(buckets)}))
    cfg = pb.ModelConfig(name="tokenizer", backend="python", max_batch_size=sc.max_batch)
    for name in text_inputs(pair):
        cfg.input.add(name=name, data_type=pb.TYPE_STRING, dims=[1])
    for n in names:
        cfg.output.add(name=n, data_type=pb.TYPE_INT64, dims=[-1])
    # the tokenizer batches what waits for it, so it can pad those requests to one width
    batching(cfg, sc)
    cfg.instance_group.add(count=sc.instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    write_config(cfg, tok)


def write_postprocess(pb: Any, post: Path, sc: ServeConfig, task: Task) -> None:
    """The softmax (copied beside it in project/) and the task's label names (labels.json)."""
    (post / "1" / "project" / "common").mkdir(parents=True)
    shutil.copy(HERE / "triton_postprocess.py", post / "1" / "model.py")
    for rel in ("common/__init__.py", "common/probs.py"):
        shutil.copy(PROJECT_ROOT / rel, post / "1" / "project" / rel)
    (post / "1" / "labels.json").write_text(json.dumps(list(task.labels)), encoding="utf-8")
    cfg = pb.ModelConfig(name="postprocess", backend="python", max_batch_size=sc.max_batch)
    cfg.input.add(name="logits", data_type=pb.TYPE_FP32, dims=[task.num_labels])
    cfg.output.add(name="label", data_type=pb.TYPE_STRING, dims=[1])
    cfg.output.add(name="label_id", data_type=pb.TYPE_INT64, dims=[1])
    cfg.output.add(name="probs", data_type=pb.TYPE_FP32, dims=[task.num_labels])
    cfg.instance_group.add(count=sc.instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    write_config(cfg, post)


def write_ensemble(pb: Any, folder: Path, sc: ServeConfig, target: str, names: list[str],
                   task: Task) -> None:
    ens = pb.ModelConfig(name=sc.model_name, platform="ensemble", max_batch_size=sc.max_batch)
    contract_io(ens, pb, task.num_labels, task.pair)
    step = ens.ensemble_scheduling.step.add(model_name="tokenizer", model_version=-1)
    for name in text_inputs(task.pair):
        step.input_map[name] = name
    for n in names:
        step.output_map[n] = n
    step = ens.ensemble_scheduling.step.add(model_name=target, model_version=-1)
    for n in names:
        step.input_map[n] = n
    step.output_map["logits"] = "logits"
    step = ens.ensemble_scheduling.step.add(model_name="postprocess", model_version=-1)
    step.input_map["logits"] = "logits"
    for n in ("label", "label_id", "probs"):
        step.output_map[n] = n
    (folder / "1").mkdir(parents=True)
    write_config(ens, folder)
