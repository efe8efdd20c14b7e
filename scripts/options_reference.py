"""Write docs/options.md, the reference of the segmentation options, from their one declaration.

    .venv/bin/python scripts/options_reference.py          # rewrite docs/options.md
    .venv/bin/python scripts/options_reference.py --check  # exit 1 when docs/options.md is out of date

Every row comes from a field of ``napari_fewshot.core.options.SegmentOptions`` and its
``Option``: the Python name, the flag of ``napari-fewshot segment``, the widget's
control, the flag of an ``evaluate`` method, and the help.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_fewshot.core.options import option_field, option_fields

OUT = Path(__file__).resolve().parent.parent / "docs" / "options.md"


def reference() -> str:
    """The Markdown of docs/options.md."""
    lines = [
        "# Segmentation options",
        "",
        "How the head's maps become labels, the same options through every door: "
        "`napari_fewshot.segment(..., name=value)` or `SegmentOptions(name=value)` in Python, "
        "a flag of `napari-fewshot segment`, a control under the widget's *Advanced settings* "
        "(where it has one), and a `+FLAG` of an engine method of `napari-fewshot evaluate` "
        "(`alpnet+nofollow`). An option left at `None` is on where it can work: with the painting "
        "on the image itself and every slice predicted.",
        "",
        "This page is written by `scripts/options_reference.py` from the options' declaration "
        "(`src/napari_fewshot/core/options.py`); do not edit it by hand.",
        "",
        "| option (default) | `segment` flag | widget | `evaluate` flag | what it does |",
        "|---|---|---|---|---|",
    ]
    for name, spec in option_fields():
        field = option_field(name)
        flag = spec.flag or f"--{name.replace('_', '-')}"
        if field.type == "bool | None":
            flag = f"{flag}, --no-{flag[2:]}"
        elif field.type != "bool":
            flag += f" {'{' + ','.join(spec.choices) + '}' if spec.choices else spec.metavar}"
        method = [f"+{choice}" for choice in spec.choices] if spec.method_choices else []
        if spec.method_flag:
            method.append(f"+{spec.method_flag}P" if spec.method_flag.endswith("=") else f"+{spec.method_flag}")
        lines.append(f"| `{name}` (`{field.default}`) | `{flag}` | {spec.label or ''} | "
                     f"{', '.join(f'`{m}`' for m in method)} | {spec.help.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether docs/options.md is up to date")
    args = parser.parse_args()
    text = reference()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run python scripts/options_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"written: {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
