"""`stnkit reproduce TABLE`: run every row of one of the paper's tables over seeds and write our
numbers beside the published ones as markdown."""
from __future__ import annotations

import fnmatch
import json
import statistics
from pathlib import Path

from ..train.config import CONFIGS, build, load_file


# Published % test errors (SPEC 3.1 Table 1, TC, 3.4 Table 4).
TABLE1 = {
    "fcn": {"r": 2.1, "rts": 5.2, "p": 3.1, "e": 3.2},
    "cnn": {"r": 1.2, "rts": 0.8, "p": 1.5, "e": 1.4},
    "st-fcn-affine": {"r": 1.2, "rts": 0.8, "p": 1.5, "e": 2.7},
    "st-fcn-projective": {"r": 1.3, "rts": 0.9, "p": 1.4, "e": 2.6},
    "st-fcn-tps": {"r": 1.1, "rts": 0.8, "p": 1.4, "e": 2.4},
    "st-cnn-affine": {"r": 0.7, "rts": 0.5, "p": 0.8, "e": 1.2},
    "st-cnn-projective": {"r": 0.8, "rts": 0.6, "p": 0.8, "e": 1.3},
    "st-cnn-tps": {"r": 0.7, "rts": 0.5, "p": 0.8, "e": 1.1},
}
TC = {"fcn": 13.2, "cnn": 3.5, "st-fcn-affine": 2.0, "st-cnn-affine": 1.7}
ADDITION = {"fcn": 47.7, "cnn": 14.7, "st-fcn-affine": 22.6, "st-fcn-projective": 18.5, "st-fcn-tps": 19.1,
            "2xst-fcn-affine": 9.0, "2xst-fcn-projective": 5.9, "2xst-fcn-tps": 5.8}
SVHN = {"svhn-cnn": (4.0, 5.6), "svhn-st-cnn-single": (3.7, 3.9), "svhn-st-cnn-multi": (3.6, 3.9)}
# Table 3 gives % accuracy; here as % error (100 - accuracy) like every other table.
CUB = {"224": {"cub-cnn": 17.7, "cub-2xst-cnn": 16.9}, "448": {"cub-2xst-cnn": 16.1, "cub-4xst-cnn": 15.9}}
COLOC = "attention ST, triplet loss"
TABLES = {  # table -> [(config file, column, {row model: published number or None})]
    "table1": [(f"table1-{d}", d, {m: v[d] for m, v in TABLE1.items()}) for d in ("r", "rts", "p", "e")],
    "tc": [("tc", "tc", TC)],
    "addition": [("addition", "addition", ADDITION)],
    "svhn": [(f"seq{s}", f"{s}px", {m: v[i] for m, v in SVHN.items()}) for i, s in enumerate((64, 128))],
    "cub": [(f"cub{s}", f"{s}px", rows) for s, rows in CUB.items()],
    "3d": [("3d", "3d", {"3d-cnn": None, "3d-st-cnn-affine": None})],  # the paper shows figures only
    "coloc": [("coloc", "coloc", {COLOC: 100.0}), ("coloc-clutter", "coloc-clutter", {COLOC: "75-93"})],
}
METRIC = {"coloc": "% of test images whose crop has IoU > 0.5 with the digit's box (higher is better)",
          "svhn": "% sequence error", "cub": "% test error (the paper's accuracy as 100 - accuracy)"}
REAL = {"svhn": {"seq64": "svhn64", "seq128": "svhn128"}}  # --real: the user's files for the stand-in
COLOC_CLASSES = {"quick": (3,), "paper": tuple(range(10))}  # co-localisation sets, one per digit class
BUDGETS = {  # budget -> (seeds, overrides)
    "quick": (1, {}),
    # 150k iterations of batch 256 (about 640 epochs of 60k digits), lr 0.01 / 10 every 50k:
    # for a GPU and the full MNIST (add source=mnist).
    "paper": (3, {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 256, "epochs": 640,
                  "lr_steps": [213, 427]}),
}


def jobs(table: str, budget: str, seeds: int | None = None, out: str = "runs/reproduce", overrides=None,
         real: bool = False, rows: list[str] | None = None):
    """The RunConfigs of every (column, row, seed) of a table; rows: only the row models matching
    one of these names or fnmatch patterns (None: all). real: SVHN from the user's files
    instead of the MNIST-sequence stand-in (CUB always needs the user's files)."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; reproducible here: {list(TABLES)}")
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {list(BUDGETS)}, got {budget!r}")
    n_seeds, extra = BUDGETS[budget]
    if table == "coloc":  # its schedule is its own (configs/coloc.yaml); paper = every class, more seeds
        extra = {}
    if rows is not None:
        known = [m for _, _, ms in TABLES[table] for m in ms]
        unmatched = [r for r in rows if not fnmatch.filter(known, r)]
        if unmatched:
            raise ValueError(f"--rows {unmatched} match no row of {table}; its rows: {list(dict.fromkeys(known))}")
    out_jobs = []
    for config_name, column, models in TABLES[table]:
        base = load_file(CONFIGS / f"{config_name}.yaml")
        if real and config_name in REAL.get(table, {}):
            base["experiment"] = REAL[table][config_name]
        if table == "coloc":
            base["experiment"] = column
        for model in models:
            if rows is not None and not any(fnmatch.fnmatch(model, r) for r in rows):
                continue
            for seed in range(seeds or n_seeds):
                for cls in COLOC_CLASSES[budget] if table == "coloc" else (None,):
                    what = {"model": base["model"], "digit_class": cls} if cls is not None else {"model": model}
                    tag = f"class{cls}-seed{seed}" if cls is not None else f"{model}-seed{seed}"
                    cfg = build(base, {**extra, **(overrides or {}), **what, "seed": seed, "out": out,
                                       "name": f"{table}-{budget}/{column}/{tag}"})
                    out_jobs.append((column, model, cfg))
    return out_jobs


def _cell(errs: list[float]) -> str:
    if not errs:
        return "-"
    if len(errs) == 1:
        return f"{errs[0]:.1f}"
    return f"{statistics.mean(errs):.1f} ± {statistics.stdev(errs):.1f}"


def markdown(table: str, results: dict, wall_s: float, command: str) -> str:
    """results: {(column, model): [errors]} -> our numbers beside the paper's; wall_s: the summed
    training time of every run."""
    columns = [c for _, c, _ in TABLES[table]]
    paper = {c: rows for _, c, rows in TABLES[table]}
    models = list(dict.fromkeys(m for _, _, rows in TABLES[table] for m in rows))
    head = "| model | " + " | ".join(f"{c.upper()} ours | {c.upper()} paper" for c in columns) + " |"
    lines = [head, "|---|" + "---|---|" * len(columns)]
    for m in models:
        cells = [f"{_cell(results.get((c, m), []))} | {_paper(paper[c].get(m))}" for c in columns]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return (f"{METRIC.get(table, '% test error')}. Command: `{command}`; training time, all runs together: "
            f"{wall_s / 60:.1f} min.\n\n" + "\n".join(lines) + "\n")


def _paper(v) -> str:
    return "-" if v is None else str(v)


def run(table: str, budget: str = "quick", seeds: int | None = None, out: str = "runs/reproduce",
        overrides=None, log=print, real: bool = False, rows: list[str] | None = None) -> Path:
    from ..train import engine

    results: dict = {}
    wall = 0.0
    todo = jobs(table, budget, seeds, out, overrides, real, rows)
    for k, (column, model, cfg) in enumerate(todo, 1):
        log(f"[{k}/{len(todo)}] {column}: {model} seed {cfg.seed}"
            + (f" digit class {cfg.digit_class}" if table == "coloc" else ""))
        summary = engine.run_dir_of(cfg) / "summary.json"
        if not engine.finished(cfg):  # finished rows are kept: a stopped reproduce picks up here
            if table == "coloc":
                from ..train.coloc import train_coloc

                train_coloc(cfg, cfg.digit_class, log=log)
            else:
                engine.train(cfg, resume=True, log=log)
        done = json.loads(summary.read_text())
        results.setdefault((column, model), []).append(done["iou_over_half" if table == "coloc" else "test_err"])
        wall += done["wall_s"]
    command = (f"stnkit reproduce {table} --budget {budget}" + (f" --seeds {seeds}" if seeds else "")
               + (" --real" if real else "")
               + (f" --rows '{','.join(rows)}'" if rows else ""))
    md = markdown(table, results, wall, command)
    path = Path(out) / f"{table}-{budget}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(md)
    log(md)
    return path


