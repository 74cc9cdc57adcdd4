"""Command-line values the commands share: lists typed comma-separated, space-separated or both.

    a("--class-ids", action=CommaList, kind=int)     # --class-ids 207,233,472,898  or  --class-ids 207 233
    parse_list("1.5,3.0,5.0", float, "--thresholds")  # [1.5, 3.0, 5.0]
"""

from __future__ import annotations

import argparse

KIND_NAMES = {int: "integers", float: "numbers"}


def parse_list(text: str, kind: type = int, flag: str = "the list") -> list:
    """`"207,233, 472"` as `[207, 233, 472]`; an empty item or one `kind` cannot read is a ValueError in one sentence
    naming the flag, the item and what to type."""
    items = [t.strip() for t in str(text).split(",")]
    what = KIND_NAMES.get(kind, kind.__name__)
    example = "207,233,472" if kind is int else "1.5,3.0"
    out = []
    for t in items:
        try:
            out.append(kind(t))
        except ValueError:
            raise ValueError(f"{flag} takes {what} separated by commas (e.g. {flag} {example}); got {t!r} in "
                             f"{text!r}") from None
    return out


class CommaList(argparse.Action):
    """An option that takes one or more values, each possibly a comma list, into one flat list of `kind`."""

    def __init__(self, option_strings, dest, kind: type = int, nargs="+", **kwargs):
        self.kind = kind
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        out = []
        for v in values if isinstance(values, list) else [values]:
            try:
                out += parse_list(v, self.kind, option_string or self.dest)
            except ValueError as e:
                raise argparse.ArgumentError(self, str(e)) from None
        setattr(namespace, self.dest, out)
