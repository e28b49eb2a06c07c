"""`stnkit reproduce TABLE`: run every row of one of the paper's tables over seeds and write our
numbers beside the published ones as markdown."""
from __future__ import annotations

import fnmatch
import logging
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .._io import atomic_write
from ..train import engine, runs
from ..train.config import CONFIGS, build, diff, load_file
from ..train.runs import run_dir_of

log = logging.getLogger("stnkit")


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
# The paper's successors, run as extra rows at the same parameter budget (no published number).
BEYOND = "beyond the paper"
TABLE1.update({m: dict.fromkeys(("r", "rts", "p", "e"), BEYOND)
               for m in ("dcn-cnn", "dcn-cnn-v2", "ic-stn-cnn-affine", "ic-stn-cnn-projective")})
TC.update(dict.fromkeys(("dcn-cnn", "dcn-cnn-v2"), BEYOND))
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


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _paper(v) -> str:
    return "-" if v is None else str(v)


def _value(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def command_line(table: str, budget: str, seeds=None, overrides=None, real=False, rows=None) -> str:
    """The `stnkit reproduce` command that schedules exactly these runs, every override included."""
    over = " ".join(f"{k}={shlex.quote(_value(v))}" for k, v in (overrides or {}).items())
    return (f"stnkit reproduce {table} --budget {budget}" + (f" --seeds {seeds}" if seeds else "")
            + (" --real" if real else "") + (f" --rows {shlex.quote(','.join(rows))}" if rows else "")
            + (f" {over}" if over else ""))


@dataclass
class Cell:
    """The finished runs of one (column, row) of a table."""

    values: list[float] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    wall_s: float = 0.0
    other: list[str] = field(default_factory=list)  # "key: ran -> this command's" per run that ran otherwise


def collect(table: str, budget: str, seeds=None, out: str = "runs/reproduce", overrides=None,
            real: bool = False) -> dict[tuple[str, str], Cell]:
    """Every finished run of the table's cells under `out` (of this call or an earlier one), each
    value read from its run's summary.json and its settings compared with this command's."""
    cells: dict[tuple[str, str], Cell] = {}
    for column, model, cfg in jobs(table, budget, seeds, out, overrides, real):
        run_dir = run_dir_of(cfg)
        done = runs.summary(run_dir)
        if done is None:
            continue
        cell = cells.setdefault((column, model), Cell())
        cell.values.append(done[done.get("metric") or ("iou_over_half" if table == "coloc" else "test_err")])
        cell.folders.append(run_dir)
        cell.wall_s += done.get("wall_s", 0.0)
        ran = diff(runs.read_config(run_dir), cfg)
        cell.other += [f"{k}: {a!r} (this command: {b!r})" for k, (a, b) in ran.items() if k not in ("progress", "threads")]
    return cells


def markdown(table: str, cells: dict[tuple[str, str], Cell], command: str, budget: str = "quick",
             overrides=None) -> str:
    """Our numbers beside the paper's, the command, where each cell's runs are, and what ran
    otherwise than the budget says."""
    columns = [c for _, c, _ in TABLES[table]]
    paper = {c: rows for _, c, rows in TABLES[table]}
    models = list(dict.fromkeys(m for _, _, rows in TABLES[table] for m in rows))
    head = "| model | " + " | ".join(f"{c.upper()} ours | {c.upper()} paper" for c in columns) + " |"
    lines = [head, "|---|" + "---|---|" * len(columns)]
    for m in models:
        marks = [("*" if (c, m) in cells and cells[(c, m)].other else "") for c in columns]
        vals = [_cell(cells[(c, m)].values) if (c, m) in cells else "-" for c in columns]
        lines.append(f"| {m} | " + " | ".join(f"{v}{k} | {_paper(paper[c].get(m))}" for v, k, c in zip(vals, marks, columns))
                     + " |")
    wall = sum(c.wall_s for c in cells.values())
    notes = []
    if overrides:
        notes.append(f"Every run of this command overrides the `{budget}` budget: "
                     + ", ".join(f"{k}={_value(v)}" for k, v in overrides.items())
                     + f". These are not the `{budget}` budget's numbers.")
    other = [(key, cell) for key, cell in cells.items() if cell.other]
    if other:
        notes.append("Cells marked * hold runs made with other settings than this command's (an earlier call): "
                     + "; ".join(f"{c}/{m}: {', '.join(dict.fromkeys(cell.other))}" for (c, m), cell in other) + ".")
    folders = [f"- {c} / {m}: " + ", ".join(f"`{f}`" for f in cell.folders) for (c, m), cell in cells.items()]
    return (f"{METRIC.get(table, '% test error')}. Command: `{command}`; training time, all runs together: "
            f"{wall / 60:.1f} min.\n\n" + "\n".join(lines) + "\n"
            + ("\n" + "\n\n".join(notes) + "\n" if notes else "")
            + ("\nRun folders (each cell's number is read from their summary.json):\n\n" + "\n".join(folders) + "\n"
               if folders else ""))


def figures(cells: dict[tuple[str, str], Cell], out: Path, stem: str) -> str:
    """What the transformers of each cell learned (its first run), as OUT/STEM/COLUMN-MODEL.png
    -> the report's markdown for them, with how to read each kind of figure once."""
    from .figures import HOW_TO_READ, NoTransformer, run_figure
    from .plots import save_figure

    parts, kinds = [], []
    for (column, model), cell in cells.items():
        try:
            fig, kind = run_figure(cell.folders[0], 8, seed=0)
        except NoTransformer:  # the baselines
            continue
        path = save_figure(fig, out / stem / f"{column}-{model}.png".replace(" ", "_").replace(",", ""))
        parts.append(f"![{column}: {model}]({path.relative_to(out)})")
        kinds += [kind] if kind not in kinds else []
    if not parts:
        return ""
    return ("\n## What the transformers learned\n\n" + " ".join(HOW_TO_READ[k] for k in kinds) + "\n\n"
            + "\n\n".join(parts) + "\n")


def run(table: str, budget: str = "quick", seeds: int | None = None, out: str = "runs/reproduce",
        overrides=None, real: bool = False, rows: list[str] | None = None, command: str | None = None) -> Path:
    """Train every unfinished run of the table (finished ones are reused: a stopped reproduce
    picks up where it was), then write OUT/TABLE-BUDGET.md. command: the command line to record
    (default: the one that schedules exactly these runs)."""
    todo = jobs(table, budget, seeds, out, overrides, real, rows)
    for k, (column, model, cfg) in enumerate(todo, 1):
        log.info(f"[{k}/{len(todo)}] {column}: {model} seed {cfg.seed}"
                 + (f" digit class {cfg.digit_class}" if table == "coloc" else ""))
        if not runs.finished(cfg):
            engine.train(cfg, resume=True)
    command = command or command_line(table, budget, seeds, overrides, real, rows)
    cells = collect(table, budget, seeds, out, overrides, real)
    md = markdown(table, cells, command, budget, overrides) + figures(cells, Path(out), f"{table}-{budget}")
    path = atomic_write(Path(out) / f"{table}-{budget}.md", md)
    log.info(md)
    return path
