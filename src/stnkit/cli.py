"""The command line: `stnkit data list|show|download`. Parses, then calls library functions."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _data_list(args) -> int:
    from .data import DESCRIPTIONS

    for name, text in DESCRIPTIONS.items():
        print(f"{name:14s} {text}")
    return 0


def _data_show(args) -> int:
    from .data.show import sample_figure
    from .plots import write_png

    out = Path(args.out or f"{args.name}.png")
    img, labels = sample_figure(args.name, args.n, args.split, args.seed, source=args.source, root=args.data_dir)
    write_png(out, img)
    print(f"wrote {out} ({args.n} {args.split} samples of {args.name!r} from {args.source}); labels, row by row:")
    rows = labels.tolist()
    for i in range(0, len(rows), 8):
        print("  " + " ".join(str(v) for v in rows[i:i + 8]))
    return 0


def _data_download(args) -> int:
    from .data import data_dir, download

    root = data_dir(args.data_dir) / "mnist"
    paths = download(root, progress=print)
    print(f"MNIST is in {root} ({len(paths)} files, SHA-256 verified)")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stnkit", description="Spatial Transformer Networks for PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="datasets: list, look at, download").add_subparsers(dest="data_command", required=True)
    data.add_parser("list", help="the paper's datasets").set_defaults(func=_data_list)
    show = data.add_parser("show", help="write a PNG grid of samples from a dataset")
    show.add_argument("name", help="a dataset name (see `stnkit data list`)")
    show.add_argument("--out", help="PNG path (default NAME.png)")
    show.add_argument("-n", type=int, default=32, help="number of samples (default 32)")
    show.add_argument("--split", default="test", choices=["train", "test"])
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--source", default="bundled", choices=["bundled", "mnist", "fashion-mnist"])
    show.add_argument("--data-dir", help="data directory (default $STNKIT_DATA or ~/.cache/stnkit)")
    show.set_defaults(func=_data_show)
    dl = data.add_parser("download", help="download full MNIST (needs internet; SHA-256 checked)")
    dl.add_argument("what", choices=["mnist"])
    dl.add_argument("--data-dir")
    dl.set_defaults(func=_data_download)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"stnkit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
