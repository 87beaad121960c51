"""`python -m tests.kserve_fields < inferenceservice.json`: the fields KServe's (and the Kubernetes
client's) generated models do not declare, as a JSON list (run in its own process by
tests/test_k8s.py)."""

import json
import sys


def unknown_fields(data, type_name: str, where: str = "") -> list[str]:
    """Fields of `data` that KServe's (and the Kubernetes client's) generated models do not
    declare, walking their openapi_types / attribute_map: a misspelled key is found here."""
    import re

    import kserve.models as km
    import kubernetes.client.models as kc

    t = type_name.strip()
    m = re.fullmatch(r"(?:list|List)\[(.+)\]", t)
    if m:
        return [x for i, v in enumerate(data) for x in unknown_fields(v, m.group(1), f"{where}[{i}]")]
    m = re.fullmatch(r"(?:dict|Dict)\((?:str|\w+), (.+)\)|Dict\[str, (.+)\]", t)
    if m:
        inner = m.group(1) or m.group(2)
        return [x for k, v in data.items() for x in unknown_fields(v, inner, f"{where}.{k}")]
    cls = getattr(km, t, None) or getattr(kc, t, None)
    if cls is None or not hasattr(cls, "openapi_types"):
        return []  # a scalar
    by_key = {cls.attribute_map[a]: typ for a, typ in cls.openapi_types.items()}
    out = [f"{where}.{k}" for k in data if k not in by_key]
    for k, v in data.items():
        if k in by_key and v is not None:
            out += unknown_fields(v, by_key[k], f"{where}.{k}")
    return out



if __name__ == "__main__":
    print(json.dumps(unknown_fields(json.load(sys.stdin), "V1beta1InferenceService")))
