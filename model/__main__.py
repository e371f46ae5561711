"""python -m model [--input N] [--classes N] [--width W]: print the paper's layer table."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from model.alexnet import PAPER_INPUT_SIZE, AlexNet
from model.summary import layer_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    parser.add_argument("--input", type=int, default=PAPER_INPUT_SIZE, help="input side, pixels")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--width", type=float, default=1.0, help="scale of every layer")
    args = parser.parse_args(argv)
    try:
        model = AlexNet(num_classes=args.classes, width=args.width, input_size=args.input)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    table = Table(title=f"Two-tower AlexNet, {args.input}x{args.input} input, width {args.width}")
    for column in ("layer", "input", "kernel/stride", "output"):
        table.add_column(column)
    table.add_column("params / tower", justify="right")
    table.add_column("params", justify="right")
    rows = layer_table(model)
    for row in rows:
        table.add_row(
            row.layer,
            row.input,
            row.kernel,
            row.output,
            f"{row.params_per_tower:,}",
            f"{row.params:,}",
        )
    total = sum(row.params for row in rows)
    table.add_section()
    table.add_row("total", "", "", "", "", f"{total:,}")
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
