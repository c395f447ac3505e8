"""The user's reference to the training fields, made from the field table (``trainer.fields``):
the model, data and training sections of the example spec (``launcher spec init``) and the
field table in docs/spec.md. ``python -m launcher.reference`` rewrites that table in a checkout.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import jinja2
import yaml

from trainer.fields import FIELDS, SECTIONS, Field

WIDTH = 100
DOC_BEGIN = "<!-- fields: made by `python -m launcher.reference` from trainer/fields.py -->"
DOC_END = "<!-- end of fields -->"


def _yaml(value: Any) -> str:
    """A value as one line of YAML that reads back as itself."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and yaml.safe_load(value) == value and ": " not in value:
        return value
    return json.dumps(value)


def _about(f: Field, full: bool = True) -> str:
    """A field's help with its choices and (``full``) its task and what an unset value
    means."""
    sentences = [f.help[0].upper() + f.help[1:]]
    options = f.options()
    if options:
        sentences.append(f"One of: {' | '.join(options)}")
    if full and f.task:
        sentences.append(f"Only with task {f.task}")
    if full and f.pipeline and f.default is not None and not f.repeated:
        sentences.append(f"Unset: the pipeline.config's, else {_yaml(f.default)}")
    elif full and f.pipeline:
        sentences.append("May come from the pipeline.config")
    return ". ".join(sentences) + "."


def _comment(text: str, indent: str) -> list[str]:
    return [indent + line for line in textwrap.wrap(text, WIDTH - len(indent) - 2,
                                                   initial_indent="# ", subsequent_indent="# ")]


def _field_lines(f: Field, indent: str) -> list[str]:
    key = (f.spec or "").rsplit(".", 1)[-1]
    value = f.example if f.example is not None else f.default
    setting = f"{key}: {_yaml(value)}" if value is not None else f"{key}:"
    return [*_comment(_about(f), indent), indent + (setting if f.in_example else f"# {setting}")]


def section_text(path: str, indent: str = "") -> str:
    """A spec section as commented YAML: each field's help, then its line, set (when the
    example sets it) or commented out."""
    section = next(s for s in SECTIONS if s.path == path)
    leaf = path.rsplit(".", 1)[-1]
    inner = indent + "  "
    lines = [*_comment(section.doc, indent), f"{indent}{leaf}:"]
    head = len(lines) - 1
    for f in FIELDS:
        if f.spec and f.spec.rpartition(".")[0] == path:
            lines += _field_lines(f, inner)
    for child in SECTIONS:
        if child.path.rpartition(".")[0] == path:
            lines += section_text(child.path, inner).split("\n")
    if section.optional:
        # Left out unless used: the whole block commented out, its own comments kept inside.
        lines = lines[:head] + [indent + "# " + line[len(indent):] for line in lines[head:]]
    return "\n".join(lines)


def example_spec_text() -> str:
    """The commented example spec that ``launcher spec init`` writes."""
    template = (Path(__file__).parent / "example-spec.yaml.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    return env.from_string(template).render(section=section_text)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _bounds(f: Field) -> str:
    low = "" if f.minimum is None else f"{'>' if f.above else '>='} {f.minimum:g}"
    high = "" if f.maximum is None else f"<= {f.maximum:g}"
    return ", ".join(part for part in (low, high) if part)


def fields_table() -> str:
    """The training fields as a Markdown table: spec path, trainer flag, default, task, the
    pipeline.config field that may set it, and what it is."""
    rows = ["| spec | trainer flag | default | bounds | task | pipeline.config | what |",
            "|---|---|---|---|---|---|---|"]
    for f in FIELDS:
        if not f.spec:
            continue
        default = "" if f.default is None else f"`{_yaml(f.default)}`"
        rows.append(f"| `{f.spec}` | `{f.flag}` | {default} | {_bounds(f)} | {f.task or 'any'} "
                    f"| {f'`{f.pipeline}`' if f.pipeline else ''} | {_cell(_about(f, False))} |")
    return "\n".join(rows)


def with_fields_table(doc: str) -> str:
    """``doc`` (docs/spec.md) with its generated field table replaced by the current one."""
    head, found, rest = doc.partition(DOC_BEGIN)
    if not found:
        raise ValueError(f"docs/spec.md has no {DOC_BEGIN!r} line")
    _, found, tail = rest.partition(DOC_END)
    if not found:
        raise ValueError(f"docs/spec.md has no {DOC_END!r} line")
    return f"{head}{DOC_BEGIN}\n{fields_table()}\n{DOC_END}{tail}"


def main() -> int:
    """Rewrite the field table of docs/spec.md in this checkout."""
    path = Path(__file__).resolve().parent.parent / "docs" / "spec.md"
    path.write_text(with_fields_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
