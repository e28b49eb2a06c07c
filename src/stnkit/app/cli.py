"""The command line: `stnkit demo|train|eval|show|export|predict|reproduce|data`. Parses, then calls
the library. Expected errors print one line and exit 2 (STNKIT_TRACEBACK=1 shows the traceback);
an interrupted run exits 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .._checks import did_you_mean


def _data_list(args) -> int:
    from ..data import DESCRIPTIONS

    for name, text in DESCRIPTIONS.items():
        print(f"{name:14s} {text}")
    return 0


def _data_show(args) -> int:
    from .figures import sample_figure
    from .plots import save_figure

    out = Path(args.out or f"{args.name}.png")
    fig, labels = sample_figure(args.name, args.n, args.split, args.seed, source=args.source, root=args.data_dir)
    save_figure(fig, out)
    print(f"wrote {out} ({args.n} {args.split} samples of {args.name!r} from {args.source}); labels, row by row:")
    rows = labels.tolist()
    for i in range(0, len(rows), 8):
        print("  " + " ".join(str(v) for v in rows[i:i + 8]))
    return 0


def _data_download(args) -> int:
    from ..data import data_dir, download

    root = data_dir(args.data_dir) / "mnist"
    paths = download(root, progress=logging.getLogger("stnkit").info)
    print(f"MNIST is in {root} ({len(paths)} files, SHA-256 verified)")
    return 0


def _explicit(args) -> dict:
    """The settings given on the command line: key=value overrides, the experiment and --model."""
    from ..train.config import parse_override

    over = dict(parse_override(o) for o in args.overrides)
    if args.experiment is not None:
        over["experiment"] = args.experiment
    if args.model:
        over["model"] = args.model
    return over


def _config_from(args):
    from ..train.config import CONFIGS, build, load_file

    if args.experiment is None:
        raise ValueError("name an experiment (stnkit data list), or continue a run with --resume RUN_FOLDER")
    base = {}
    if args.config:
        base = load_file(args.config)
    elif (CONFIGS / f"{args.experiment}.yaml").is_file():
        base = load_file(CONFIGS / f"{args.experiment}.yaml")
    elif (CONFIGS / f"table1-{args.experiment}.yaml").is_file():
        base = load_file(CONFIGS / f"table1-{args.experiment}.yaml")
    return build(base, _explicit(args))


def _resume_target(args) -> tuple[Path | None, dict]:
    """--resume: (the run folder to continue or None when it does not exist yet, the explicit
    settings). The positional is a run folder (holding config.yaml) or an experiment name."""
    from ..train import runs

    if args.config:
        raise ValueError("--resume continues the run folder's own config.yaml; give changes as key=value, not --config")
    if args.experiment is not None and (Path(args.experiment) / runs.CONFIG).is_file():
        return Path(args.experiment), _explicit(argparse.Namespace(**{**vars(args), "experiment": None}))
    from ..data import names

    if args.experiment is not None and ("/" in args.experiment or (Path(args.experiment).is_dir()
                                                                   and args.experiment not in names())):
        runs.read_config(args.experiment)  # says what the folder is instead
    run_dir = runs.run_dir_of(_config_from(args))
    return (run_dir if runs.holds_run(run_dir) else None), _explicit(args)


def _torchrun(args) -> int:
    """`stnkit train --nproc N ...` = `torchrun --standalone --nproc_per_node=N -m stnkit train ...`."""
    from .launch import torchrun

    argv = [*([args.experiment] if args.experiment else []), *(["--model", args.model] if args.model else []),
            *(["--config", args.config] if args.config else []), *(["--resume"] if args.resume else []),
            *args.overrides]
    return torchrun(args.nproc, ["train", *argv])


def _train(args) -> int:
    from ..train import engine, runs
    from ..train.config import build, resume_changes
    from ..train.objectives import check_processes, objective_for

    if args.nproc is not None and args.nproc < 1:
        raise ValueError(f"--nproc must be a positive number of processes, got {args.nproc}")
    if args.resume:
        run_dir, over = _resume_target(args)
        cfg = runs.read_config(run_dir) if run_dir else _config_from(args)
        if run_dir:  # a refused change fails here, once, before any process starts
            resume_changes(cfg, build(cfg.to_dict(), over))
    else:
        cfg = _config_from(args)
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        check_processes(objective_for(cfg), args.nproc)  # bad settings fail here, once, before any process starts
        return _torchrun(args)
    if args.resume and run_dir is not None:
        engine.resume(run_dir, over)
    else:
        if args.resume:
            logging.getLogger("stnkit").info(f"no run in {runs.run_dir_of(cfg)} yet: starting it")
        engine.train(cfg, resume=args.resume)
    return 0


def _plot(args) -> int:
    from .curves import plot_runs

    out = plot_runs(args.runs, args.out)
    print(f"wrote {out}: error, loss and learning rate per epoch of {len(args.runs)} run(s); "
          "one colour per run, training dashed, test solid")
    return 0


def _eval(args) -> int:
    from ..train.objectives import objective_for
    from ..train.runs import load_run

    cfg, model, test = load_run(args.run)
    objective = objective_for(cfg)
    m = objective.evaluate(model, test, cfg.eval_batch_size)
    print(f"{args.run}: {cfg.model} on {cfg.experiment}: {objective.describe(m)}")
    return 0


def _show(args) -> int:
    from .figures import HOW_TO_READ, run_figure
    from .plots import save_figure

    out = Path(args.out or Path(args.run) / "transformers.png")
    fig, kind = run_figure(args.run, args.n, args.seed)
    save_figure(fig, out)
    print(f"wrote {out}. {HOW_TO_READ[kind]}")
    return 0


def _export(args) -> int:
    from .export import OPSET, export_run

    r = export_run(args.run, args.format, args.out, check=args.check, dynamo=not args.legacy)
    what = "TorchScript" if args.format == "torchscript" else f"ONNX (opset {OPSET}{', legacy exporter' if args.legacy else ''})"
    print(f"wrote {r['path']}: {r['model']} as {what}, input x (batch, {', '.join(map(str, r['input']))})")
    if r["max_abs_diff"] is not None:
        print(f"max |difference| from PyTorch on {r['checked']} test images: {r['max_abs_diff']:.2e}")
    return 0


def _predict(args) -> int:
    from ..train.objectives import objective_for
    from ..train.runs import load_run
    from .predict import predict_files

    cfg, model, _ = load_run(args.run)
    if not objective_for(cfg).classifies:
        raise ValueError(f"{args.run} is a {cfg.experiment} run: its model crops, it has no classes to predict; "
                         f"see what it crops with: stnkit show {args.run}")
    for r in predict_files(model, args.images, args.out, top=args.top, invert=args.invert):
        best = ", ".join(f"{c} ({p:.3f})" for c, p in r["top"])
        print(f"{r['file']}: {best}" + "".join(f"\n  transformer output: {w}" for w in r["warped"])
              + f"\n  figure: {r['figure']}")
    return 0


def _demo(args) -> int:
    from .demo import demo

    demo(out=args.out, epochs=args.epochs)
    return 0


def _reproduce(args) -> int:
    from ..train.config import parse_override
    from .reproduce import run

    rows = [r for r in args.rows.split(",") if r] if args.rows else None
    run(args.table, args.budget, args.seeds, args.out, dict(parse_override(o) for o in args.overrides), real=args.real,
        rows=rows, command=" ".join(["stnkit", *(args.argv or [])]))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse that adds "did you mean ...?" to a misspelt subcommand or choice."""

    def _check_value(self, action, value):
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as e:
            hint = did_you_mean(value, action.choices or ())
            if not hint:
                raise
            raise argparse.ArgumentError(action, f"{e.message}; {hint}") from None


def _typed(value) -> str:
    """A config value as it is typed after key= (read as YAML): null, true, [5, 8]."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _config_keys() -> str:
    """The epilog of `stnkit train --help`: every config key with its default and meaning."""
    from ..train.config import HELP, RESUMABLE, RunConfig

    rows = [f"  {k:<18} {_typed(v):<14} {HELP[k]}" for k, v in RunConfig().to_dict().items()]
    return "\n".join([
        "config keys, their defaults and meanings. Give them as key=value after the experiment (values read",
        "as YAML: stnkit train rts epochs=5 lr_steps=[3,4] clip_grad=null), or as `key: value` lines of a",
        "YAML file with --config FILE; an experiment's shipped config (stnkit/train/configs/) sets some",
        "first. The resolved config is saved as RUN/config.yaml.",
        "", *rows, "",
        "--resume continues a run with its own config.yaml; key=value may then change only",
        f"{', '.join(RESUMABLE)}.",
    ])


def parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ..train.config import RESUMABLE

    p = _Parser(prog="stnkit", description="Spatial Transformer Networks for PyTorch.")
    p.add_argument("--version", action="version", version=f"stnkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, help="what to do (stnkit COMMAND --help: its options)")
    d = sub.add_parser("demo", help="CNN vs ST-CNN on RTS-distorted MNIST in a few minutes, with a figure")
    d.add_argument("--out", default="runs/demo", help="report folder (default runs/demo)")
    d.add_argument("--epochs", type=int, default=None, help="override the demo's epochs (default: its config's)")
    d.set_defaults(func=_demo)
    t = sub.add_parser("train", help="train a model on an experiment's dataset, or continue a run",
                       epilog=_config_keys(), formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("experiment", nargs="?",
                   help="dataset name (stnkit data list), e.g. rts, tc, addition; with --resume also a run folder")
    t.add_argument("--model", help="model name (default: the experiment config's)")
    t.add_argument("--config", help="a YAML config file (default: the experiment's shipped config)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run (a run folder, or the one EXPERIMENT --model ... names) from its newest good "
                        f"checkpoint, with its own config.yaml; key=value may only change {', '.join(RESUMABLE)}")
    t.add_argument("--nproc", type=int, default=None,
                   help="data-parallel processes on this machine (runs torchrun --standalone; gloo on CPU, NCCL on GPUs)")
    t.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. epochs=5 lr=0.05 (keys: below)")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="test error of a trained run")
    e.add_argument("run", help="run folder (holding config.yaml and checkpoints)")
    e.set_defaults(func=_eval)
    pl = sub.add_parser("plot", help="training curves of one or more runs, overlaid (e.g. CNN vs ST-CNN)")
    pl.add_argument("runs", nargs="+", metavar="RUN", help="run folders; each is one colour, labelled by its name")
    pl.add_argument("--out", default="curves.png", help="PNG path (default: %(default)s in the current folder)")
    pl.set_defaults(func=_plot)
    s = sub.add_parser("show", help="figure: what each transformer of a trained run looks at")
    s.add_argument("run", help="run folder")
    s.add_argument("--out", help="PNG path (default RUN/transformers.png)")
    s.add_argument("-n", type=int, default=12, help="test inputs to show, four to a row (default %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="seed that picks the test inputs (default %(default)s)")
    s.set_defaults(func=_show)
    x = sub.add_parser("export", help="write a trained run as ONNX or TorchScript, transformers included")
    x.add_argument("run", help="run folder")
    x.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="onnx or torchscript")
    x.add_argument("--out", help="output file (default RUN/model.onnx or RUN/model.pt)")
    x.add_argument("--check", type=int, default=256,
                   help="compare with PyTorch on this many test images (0: skip; default %(default)s)")
    x.add_argument("--legacy", action="store_true", help="ONNX: the TorchScript-based exporter (torch < 2.5; no 3D)")
    x.set_defaults(func=_export)
    pr = sub.add_parser("predict", help="classify image files; write what each transformer made of them")
    pr.add_argument("run", help="run folder")
    pr.add_argument("images", nargs="+", help="PNG or JPEG files (resized to the model's input, grey or RGB)")
    pr.add_argument("--out", help="folder for the transformer outputs (default: beside each image)")
    pr.add_argument("--top", type=int, default=3, help="classes to list per image (default 3)")
    pr.add_argument("--invert", action="store_true",
                    help="dark ink on light paper: invert the images (the digit datasets are light on dark)")
    pr.set_defaults(func=_predict)
    r = sub.add_parser("reproduce", help="every row of a paper table, beside the published numbers")
    r.add_argument("table", choices=["table1", "tc", "addition", "svhn", "cub", "3d", "coloc"],
                   help="the paper's table: table1 (distorted MNIST), tc, addition, svhn, cub, 3d or coloc")
    r.add_argument("--budget", default="quick", choices=["quick", "paper"],
                   help="quick: the shipped configs, 1 seed; paper: the paper's schedule (640 epochs of batch 256), "
                        "3 seeds, for a GPU and full MNIST (source=mnist) (default %(default)s)")
    r.add_argument("--seeds", type=int, default=None, help="seeds per row (quick: 1, paper: 3)")
    r.add_argument("--out", default="runs/reproduce", help="folder for the runs and the table (default %(default)s)")
    r.add_argument("--real", action="store_true",
                   help="svhn: train on your SVHN files (DATA/svhn) instead of the MNIST-sequence stand-in")
    r.add_argument("--rows", help="only these rows: comma-separated model names or patterns (e.g. 'fcn,*st-fcn-*'); "
                                  "the others show '-' in the table")
    r.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    r.set_defaults(func=_reproduce)
    data = sub.add_parser("data", help="datasets: list, look at, download").add_subparsers(
        dest="data_command", required=True, help="what to do with the datasets")
    data.add_parser("list", help="the paper's datasets").set_defaults(func=_data_list)
    show = data.add_parser("show", help="write a PNG grid of samples from a dataset")
    show.add_argument("name", help="a dataset name (see `stnkit data list`)")
    show.add_argument("--out", help="PNG path (default NAME.png)")
    show.add_argument("-n", type=int, default=32, help="number of samples (default 32)")
    show.add_argument("--split", default="test", choices=["train", "test"],
                      help="the split the samples come from (default %(default)s)")
    show.add_argument("--seed", type=int, default=0, help="seed of the samples drawn (default %(default)s)")
    show.add_argument("--source", default="bundled", choices=["bundled", "mnist", "fashion-mnist"],
                      help="digits the samples are made from (default %(default)s: 5,000 MNIST digits, no "
                           "download; mnist: stnkit data download mnist)")
    show.add_argument("--data-dir", help="data directory (default $STNKIT_DATA or ~/.cache/stnkit)")
    show.set_defaults(func=_data_show)
    dl = data.add_parser("download", help="download full MNIST (needs internet; SHA-256 checked)")
    dl.add_argument("what", choices=["mnist"], help="the dataset to download: mnist")
    dl.add_argument("--data-dir", help="data directory (default $STNKIT_DATA or ~/.cache/stnkit); MNIST goes to DIR/mnist")
    dl.set_defaults(func=_data_download)
    return p


class _Console(logging.Handler):
    """stnkit's log lines on the console of the moment: info on stdout, warnings on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        stream.write(self.format(record) + "\n")
        stream.flush()


def _console_logging() -> None:
    logger = logging.getLogger("stnkit")
    if not any(isinstance(h, _Console) for h in logger.handlers):
        handler = _Console()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _fail(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # one voice for a multi-process run
        print(f"stnkit: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from .._io import MissingDependency
    from ..train.stops import TrainingInterrupted

    p = parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = p.parse_known_args(argv)
    args.argv = argv
    # key=value overrides may stand anywhere after the command (argparse keeps only the first run)
    bad = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    _console_logging()
    try:
        return args.func(args)
    except TrainingInterrupted as e:  # a checkpoint was saved, and the engine said so and how to go on
        return 128 + e.signum
    except KeyboardInterrupt:
        _fail("interrupted (a second Ctrl-C, or before training started): nothing more was saved; "
              "an interrupted run continues from its last checkpoint with stnkit train --resume RUN")
        return 130
    except (ValueError, OSError, RuntimeError, MissingDependency) as e:
        if os.environ.get("STNKIT_TRACEBACK"):
            raise
        _fail(f"error: {e}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
