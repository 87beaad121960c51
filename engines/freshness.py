"""Which built artifacts a build would remake because their code changed: the rule `python -m
engines --dry-run` applies, for whoever publishes results (evaluate.compare, the model cards of
engines.steps), so a result whose artifact would be rebuilt is never published as current.

Left out of every step's code fingerprint (common.codehash.NOT_CODE): it decides what is
published, never an artifact's bytes.
"""

from __future__ import annotations

from common.manifest import Manifest


def current_code() -> frozenset[str]:
    """The code fingerprint of every step factory as the code stands now (common.codehash)."""
    from common.codehash import code_fingerprint
    from engines.steps import STEP_FACTORIES

    return frozenset(code_fingerprint(f) for fs in STEP_FACTORIES.values() for f in fs)


CODE_CHANGED = "the code that builds it changed since it was built"


def code_stale(man: Manifest, now: frozenset[str] | None = None) -> dict[str, str]:
    """The built artifacts a build would remake because of code alone, each with why: its own
    builder changed (`--dry-run`: "the code that builds it changed"), or an artifact it is made
    from is remade. The rule publishing applies (evaluate.compare, the model cards) besides the
    manifest's own checks, so a result whose artifact would be rebuilt is never published as
    current. A step's code fingerprint names its factory and helpers, so matching an entry's
    against the set of current ones is exact (`now`: current_code(), when already computed)."""
    now = current_code() if now is None else now
    out: dict[str, str] = {}

    def why(name: str, seen: frozenset[str]) -> str | None:
        if name in out:
            return out[name]
        e = man.entries.get(name)
        if not isinstance(e, dict) or "skipped" in e or name in seen:
            return None
        raw = e.get("inputs")
        inputs: dict[str, str] = raw if isinstance(raw, dict) else {}
        if inputs.get("code") not in now:
            out[name] = (CODE_CHANGED if "code" in inputs
                         else "it was built by code that recorded no code fingerprint")
            return out[name]
        for k in sorted(inputs):
            dep = k.removeprefix("artifact:")
            if k.startswith("artifact:") and why(dep, seen | {name}):
                out[name] = f"it is made from {dep}, which would be rebuilt ({out[dep]})"
                return out[name]
        return None

    for name in list(man.entries):
        why(name, frozenset())
    return out
