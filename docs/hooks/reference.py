"""MkDocs hook: the configuration and CLI references, generated at build time.

Pages hold a marker (``<!-- medmm:config-reference -->``, ``<!-- medmm:cli-reference -->``)
that this hook replaces with tables built from the typed config models (every key, its default
for each task, its type / range and description) and from the click commands themselves, so
neither reference is ever copied by hand.
"""

from __future__ import annotations

import html
from typing import Any

CONFIG_MARKER = "<!-- medmm:config-reference -->"
CLI_MARKER = "<!-- medmm:cli-reference -->"


def _cell(value: Any) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text


def _type_of(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type_of(p, defs) for p in prop["anyOf"])
    if "$ref" in prop:
        return "section"
    kind = prop.get("type", "any")
    if kind == "array":
        kind = f"list of {_type_of(prop.get('items', {}), defs)}"
    bounds = []
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in prop:
            bounds.append(f"{sign} {prop[key]}")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _rows(schema: dict[str, Any], defs: dict[str, Any], values: dict[str, Any], prefix: str) -> list[str]:
    rows = []
    for key, prop in schema.get("properties", {}).items():
        dotted = f"{prefix}{key}"
        target = prop
        if "$ref" in prop:
            target = defs[prop["$ref"].split("/")[-1]]
        elif "allOf" in prop and len(prop["allOf"]) == 1 and "$ref" in prop["allOf"][0]:
            target = defs[prop["allOf"][0]["$ref"].split("/")[-1]]
        value = values.get(key) if isinstance(values, dict) else None
        if "properties" in target:
            rows.extend(_rows(target, defs, value or {}, dotted + "."))
            continue
        default = "`null`" if value is None else f"`{_cell(value)}`"
        rows.append(f"| `{dotted}` | {default} | {_type_of(prop, defs)} | {_cell(prop.get('description', ''))} |")
    return rows


def config_reference() -> str:
    """Markdown: one table per registered task, every key with its resolved default."""
    from medmm.config import json_schema, task_defaults
    from medmm.plugins import get_registry

    out = []
    for name, spec in get_registry().items("task"):
        schema = json_schema(spec)
        defs = schema.get("$defs", {})
        values = task_defaults(spec).model_dump(mode="json")
        out.append(f"## `{name}`\n")
        out.append(f"`medmm config {name}` prints these values as YAML; `medmm config {name} --schema` "
                   "prints the JSON Schema this table is generated from.\n")
        out.append("| key | default | type / range | description |")
        out.append("|---|---|---|---|")
        out.extend(_rows(schema, defs, values, ""))
        out.append("")
    return "\n".join(out)


def cli_reference() -> str:
    """Markdown: the ``--help`` text of every command of the click application."""
    import click

    from medmm.cli import make_cli

    cli = make_cli()
    out = []

    def walk(cmd: click.Command, path: list[str], parent: click.Context | None) -> None:
        ctx = click.Context(cmd, info_name=" ".join(path), parent=None, terminal_width=100, max_content_width=100)
        out.append(f"## `{' '.join(path)}`\n")
        out.append("```text\n" + html.unescape(cmd.get_help(ctx)) + "\n```\n")
        if isinstance(cmd, click.Group):
            for name in sorted(cmd.list_commands(ctx)):
                sub = cmd.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    walk(sub, path + [name], ctx)

    walk(cli, ["medmm"], None)
    return "\n".join(out)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace the reference markers of a page with the generated references."""
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown
