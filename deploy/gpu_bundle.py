"""`make gpu-bundle` / `python -m deploy gpu-bundle`: one archive, at most 64 MiB, that an
air-gapped CUDA host with only Python and a CUDA torch can run end to end: the source, the build's
task (artifacts/task: the rows and label names, as the build froze them), the base model's weights
(FP16, xz: half the FP32 bytes, turned back into FP32 on the host), the wheels such a host lacks
(transformers, tokenizers, huggingface_hub, peft at the versions tested here, and bitsandbytes cut
to its CPU library and the one for the host's CUDA) and `gpu_run.sh`, which trains on CUDA, runs the GPU check
and the `gpu` tests and writes what it measured under $OUT (deploy/gpu_run.sh says how).

    tar -xf gpu-bundle/bundle.tar -C b && OUT=$PWD/gpu-out bash b/gpu_run.sh [STAGES]

The archive carries MANIFEST.json (every member's sha256 and bytes, the versions, the source's
commit) and is written atomically; one over the limit is refused with its largest members."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import check_ranges, doc
from common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# what a CUDA host with only torch lacks, at the versions this project is tested with here
WHEELS = ("transformers", "tokenizers", "huggingface_hub", "peft", "bitsandbytes")
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "vocab.txt")
# the hosts' platform (x86-64 Linux; Python 3.12, NGC PyTorch's): pip takes only the tags named
PLATFORMS = [x for p in ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                         "manylinux2014_x86_64") for x in ("--platform", p)]
# not needed to run: the published results and their figures
SOURCE_SKIP = ("docs/results/",)


@dataclass(frozen=True)
class GpuBundleConfig:
    out: str = doc("gpu-bundle/bundle.tar", "the archive to write")
    artifacts: str = doc("artifacts", "the build whose task (artifacts/task) travels")
    model: str = doc("", "the base model folder (empty: the packaged MiniLM)")
    cuda: str = doc("130", "bitsandbytes keeps its library for this CUDA version (the host "
                           "torch's, as bitsandbytes names it: 130 for torch 2.11+cu130)")
    limit_mib: float = doc(64.0, "the most the archive may hold")
    wheels: str = doc("", "a folder holding the wheels (empty: pip download into --cache)")
    cache: str = doc(".cache/gpu-bundle", "downloaded wheels and the compressed model, reused")

    def __post_init__(self) -> None:
        check_ranges(self, limit_mib="> 0")
        if not self.cuda.isdigit():
            raise ValueError(f"cuda {self.cuda!r}: the digits of a CUDA version, as "
                             "libbitsandbytes_cuda<version>.so names it (130 for CUDA 13.0)")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def xz(data: bytes) -> bytes:
    return lzma.compress(data, preset=6)


def source_files(root: Path = ROOT) -> list[str]:
    """The files git tracks or would track (untracked, not ignored), as they are on disk."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True).stdout.decode().split("\0")
    return sorted(f for f in out if f and (root / f).is_file() and not f.startswith(SOURCE_SKIP))


def tar_xz(files: dict[str, bytes]) -> bytes:
    """A .tar.xz of {name: bytes}, with fixed times and owners (the same bytes for the same files)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(files[name]), 0, 0o644
            t.addfile(info, io.BytesIO(files[name]))
    return xz(buf.getvalue())


def fp16_weights(model_dir: Path) -> bytes:
    """The model's weights as FP16 safetensors (floating tensors halved; others as they are)."""
    import torch
    from safetensors.torch import load_file, save

    src = model_dir / "model.safetensors"
    if not src.is_file():
        raise ConfigError(f"{model_dir} has no model.safetensors: a bundle carries safetensors "
                          "weights (save the model with save_pretrained(safe_serialization=True))")
    tensors = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
               for k, v in load_file(src).items()}
    return save(tensors, metadata={"format": "pt"})


def cut_bitsandbytes(wheel: bytes, cuda: str) -> bytes:
    """The bitsandbytes wheel with only its CPU library and the one for the host's CUDA version
    (the others are most of its bytes), its RECORD rewritten to list what is left."""
    keep = re.compile(rf"libbitsandbytes_(cpu|cuda{cuda})\.(so|dylib|dll)$")
    src = zipfile.ZipFile(io.BytesIO(wheel))
    kept = [i for i in src.infolist()
            if not re.search(r"libbitsandbytes_\w+\.(so|dylib|dll)$", i.filename)
            or keep.search(i.filename)]
    if not any(keep.search(i.filename) and "cuda" in i.filename for i in kept):
        have = sorted(set(re.findall(r"libbitsandbytes_cuda(\d+)\.", " ".join(
            i.filename for i in src.infolist()))))
        raise ConfigError(f"this bitsandbytes wheel has no libbitsandbytes_cuda{cuda}: choose "
                          f"--cuda from {', '.join(have)}")
    names = {i.filename for i in kept}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for i in kept:
            data = src.read(i.filename)
            if i.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(x for x in lines if x.split(",")[0] in names) + "\n").encode()
            z.writestr(i, data)
    return out.getvalue()


def wheel_files(cfg: GpuBundleConfig) -> dict[str, bytes]:
    """{file name: bytes} of WHEELS at the versions installed here (bitsandbytes cut)."""
    import importlib.metadata

    pins = {name: importlib.metadata.version(name) for name in WHEELS}
    folder = Path(cfg.wheels) if cfg.wheels else Path(cfg.cache) / "wheels"
    out: dict[str, bytes] = {}
    for name, version in pins.items():
        norm = re.sub(r"[-_.]+", "_", name).lower()
        found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{norm}-{version}-")]
        if not found and not cfg.wheels:
            folder.mkdir(parents=True, exist_ok=True)
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                "--only-binary=:all:", *PLATFORMS,
                                "--python-version", "3.12", "-d", str(folder),
                                f"{name}=={version}"], capture_output=True, text=True)
            if r.returncode:
                raise ConfigError(f"pip could not download {name}=={version}: "
                                  f"{(r.stderr.strip().splitlines() or [''])[-1]} (put the wheel "
                                  "in a folder and pass --wheels)")
            found = [p for p in folder.glob("*.whl")
                     if p.name.lower().startswith(f"{norm}-{version}-")]
        if not found:
            raise ConfigError(f"no {name}=={version} wheel in {folder} (the version installed "
                              "here, which the bundle must carry)")
        data = found[0].read_bytes()
        out[found[0].name] = cut_bitsandbytes(data, cfg.cuda) if name == "bitsandbytes" else data
    return out


def model_members(model_dir: Path, cache: Path) -> dict[str, bytes]:
    """The model's config and tokenizer files, and its weights as FP16 safetensors + xz (cached by
    the FP32 file's hash: compressing takes a minute)."""
    out = {f"model/{f}": (model_dir / f).read_bytes() for f in MODEL_FILES if (model_dir / f).is_file()}
    if "model/config.json" not in out:
        raise ConfigError(f"{model_dir} has no config.json: pass --model a saved model folder")
    key = sha256((model_dir / "model.safetensors").read_bytes())[:16] if (
        model_dir / "model.safetensors").is_file() else "none"
    cached = cache / f"model-{key}.fp16.safetensors.xz"
    if not cached.is_file():
        from common.manifest import write_bytes_atomic

        write_bytes_atomic(cached, xz(fp16_weights(model_dir)))
    out["model/model.fp16.safetensors.xz"] = cached.read_bytes()
    return out


def task_members(artifacts: Path) -> dict[str, bytes]:
    task = artifacts / "task"
    if not (task / "task.json").is_file():
        raise ConfigError(f"{task} holds no task: run `make engines` (or `python -m engines "
                          f"--stages task --artifacts {artifacts}`) first; the bundle carries the "
                          "task the build froze")
    files = {f"task/{p.relative_to(task)}": p.read_bytes() for p in sorted(task.rglob("*"))
             if p.is_file()}
    # read on the host as a local folder of the task: the label names beside the rows (the
    # loader's labels.json), the pair column by its canonical name
    summary = json.loads(files["task/task.json"])
    files["task/labels.json"] = json.dumps(summary["labels"]).encode()
    args = "--text-pair-column text_pair\n" if summary.get("pair") else "\n"
    return {"data.tar.xz": tar_xz(files), "TASK_ARGS": args.encode()}


def build_bundle(cfg: GpuBundleConfig, say: Any = print) -> dict[str, Any]:
    """Write the archive; returns its manifest (members, sizes, hashes, versions)."""
    from common.manifest import atomic_output
    from common.modelsource import packaged_model_dir

    t0 = time.time()
    model_dir = Path(cfg.model) if cfg.model else packaged_model_dir()
    say("[bundle] source")
    src = {f: (ROOT / f).read_bytes() for f in source_files()}
    members: dict[str, bytes] = {"src.tar.xz": tar_xz(src)}
    say("[bundle] task")
    members.update(task_members(Path(cfg.artifacts)))
    say(f"[bundle] base model from {model_dir} (FP16 + xz, cached in {cfg.cache})")
    members.update(model_members(model_dir, Path(cfg.cache)))
    say("[bundle] wheels")
    members.update({f"wheels/{n}": b for n, b in wheel_files(cfg).items()})
    members["gpu_run.sh"] = (ROOT / "deploy" / "gpu_run.sh").read_bytes()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip())
    bundle_id = sha256(b"".join(sha256(members[k]).encode() for k in sorted(members)))[:16]
    members["BUNDLE_ID"] = (bundle_id + "\n").encode()
    manifest: dict[str, Any] = {"bundle": bundle_id, "commit": commit, "uncommitted_changes": dirty,
                "bitsandbytes_cuda": cfg.cuda, "source_files": len(src),
                "members": {k: {"bytes": len(v), "sha256": sha256(v)} for k, v in members.items()},
                "run": "tar -xf bundle.tar -C b && OUT=$PWD/gpu-out bash b/gpu_run.sh [STAGES]"}
    members["MANIFEST.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    total = sum(len(v) for v in members.values()) + 512 * (2 * len(members) + 4)  # tar headers
    limit = int(cfg.limit_mib * 2**20)
    if total > limit:
        big = sorted(members, key=lambda k: -len(members[k]))[:3]
        raise ConfigError(f"the bundle would hold {total / 2**20:.1f} MiB, over --limit-mib "
                          f"{cfg.limit_mib:g}; its largest members: " +
                          ", ".join(f"{k} {len(members[k]) / 2**20:.1f} MiB" for k in big))
    out = Path(cfg.out)
    with atomic_output(out) as tmp:
        with tarfile.open(tmp, "w") as t:
            for name in sorted(members):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(members[name]), int(t0)
                info.mode = 0o755 if name.endswith(".sh") else 0o644
                t.addfile(info, io.BytesIO(members[name]))
    manifest["archive_bytes"] = out.stat().st_size
    say(f"[bundle] {out}: {manifest['archive_bytes'] / 2**20:.1f} MiB of {cfg.limit_mib:g} "
        f"({len(members)} members, {time.time() - t0:.0f} s)")
    return manifest
