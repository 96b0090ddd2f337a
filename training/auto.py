"""``alignnet train --model auto``: the user never pays for a loss. The servable candidates are trained on the same
split, seed and stage budgets; the one with the best newest-bin R² on the training days' validation trials (held out
from fitting, never the test trials) becomes the run's artifact, and the table it was chosen from is written beside
it (``auto.json``, ``auto.md``) and printed. AlignNet stays the served default where it wins."""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path
from typing import Any

from alignnet.model.registry import model_class
from alignnet.recordings.dataset import DataError, atomic_write_bytes, atomic_write_json
from alignnet.training.batches import is_rank0
from alignnet.training.run import train

log = logging.getLogger(__name__)

# the servable, causal decoders worth serving: the served default, the strongest causal baseline on real
# recordings (docs/results.md) and the closed-form yardstick
AUTO_CANDIDATES = ("alignnet-causal", "lstm", "wiener")
SELECT_BY = "val_newest_r2"  # what a live decoder serves, on trials no candidate was fitted on


def candidate_config(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """``cfg`` for one candidate: the same data, split, seed and stage budgets; the model's own settings from the
    config where it is the config's model, else from its evaluation section (what ``alignnet evaluate`` gives it)."""
    if not model_class(name).servable:
        raise DataError(f"{name} is an evaluation yardstick: it cannot be a served candidate")
    out = copy.deepcopy(cfg)
    own = name == cfg.get("model", "alignnet")
    out["model"] = name
    out["model_config"] = dict(cfg.get("model_config") or {}) if own else \
        dict((cfg.get("evaluate", {}).get("models") or {}).get(name) or {})
    return out


def _row(name: str, result: dict[str, Any]) -> dict[str, Any]:
    m, stages = result["metrics"], result["stages"]
    return {"model": name, "val_newest_r2": m.get("val_newest_r2"), "val_window_r2": m.get("val_s2b_r2"),
            "test_newest_r2": m.get("test_newest_r2"), "artifact": str(result["artifact"]),
            "epochs": {s: v.get("epochs") for s, v in stages.items()}}


def table(rows: list[dict[str, Any]], winner: str) -> str:
    """The candidates as a Markdown table, the served one marked."""

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    lines = ["| model | validation newest-bin R² (selects) | validation window R² | test newest-bin R² | served |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {f(r['val_newest_r2'])} | {f(r['val_window_r2'])} | {f(r['test_newest_r2'])} | "
              f"{'**yes**' if r['model'] == winner else ''} |" for r in rows]
    return "\n".join(lines)


def _serve(winner: Path, dest: Path) -> None:
    """The winner's artifact copied to ``dest``, whole: into a temporary folder first, then renamed into place."""
    tmp = dest.with_name(f".tmp-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(winner, tmp)
    old = dest.with_name(f"{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def train_auto(cfg: dict[str, Any], config_path: Path, *, candidates=AUTO_CANDIDATES, out: Path | None = None,
               train_fn=train, **train_kw) -> dict[str, Any] | None:
    """Train every candidate into OUT/candidates/<name> (``training.run.train``, the same settings but the model),
    serve the best by ``SELECT_BY`` as OUT/artifact. Returns the winner, the rows and the table (None on ranks other
    than 0 of a torchrun job, which train every candidate alongside)."""
    candidates = list(dict.fromkeys(candidates))
    if not candidates:
        raise DataError("--candidates names no model to train")
    configs = {name: candidate_config(cfg, name) for name in candidates}  # every name checked before any training
    out = out or Path("runs") / config_path.stem
    rows = []
    for i, (name, c) in enumerate(configs.items()):
        log.info("candidate %d/%d: %s", i + 1, len(configs), name)
        result = train_fn(c, config_path, out=out / "candidates" / name, **train_kw)
        if result["metrics"] is not None:
            rows.append(_row(name, result))
    if not is_rank0():
        return None
    scored = [r for r in rows if r[SELECT_BY] is not None]
    if not scored:
        raise DataError("no candidate could be scored: the validation trials' behavior does not vary")
    winner = max(scored, key=lambda r: r[SELECT_BY])
    _serve(Path(winner["artifact"]), out / "artifact")
    md = table(rows, winner["model"])
    atomic_write_json(out / "auto.json", {"selected_by": SELECT_BY, "winner": winner["model"], "candidates": rows})
    atomic_write_bytes(out / "auto.md", (md + "\n").encode())
    return {"artifact": out / "artifact", "winner": winner["model"], "rows": rows, "table": md}
