"""Every field of a stage with its description and value, from the schema: the fields list of
``reflowma <stage> --help``."""

from __future__ import annotations

from reflowma.infra.config.stage import defaults
from reflowma.infra.config.validate import schema


def field_docs(stage: str, values: dict | None = None) -> list[tuple[str, str, object]]:
    """(dotted field, description, value) for every field of a stage; the values are the stage
    defaults unless a resolved config is given."""
    s = schema()["$defs"]

    def resolve(node):
        while "$ref" in node:
            base = s
            for r in node["$ref"].split("/")[2:]:
                base = base[r]
            node = {**base, **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    rows = []

    def walk(node, prefix, dvals):
        if prefix == "net" and isinstance(dvals, dict):  # the chosen architecture's fields
            node = s.get(f"net_{dvals.get('name', 'mlp')}", node)
        node = resolve(node)
        props = node.get("properties")
        if props and node.get("type") == "object":
            for k, sub in props.items():
                walk(sub, f"{prefix}.{k}" if prefix else k,
                     dvals.get(k) if isinstance(dvals, dict) else None)
            return
        desc = node.get("description", "")
        if "enum" in node:
            desc += f" [{'|'.join(map(str, node['enum']))}]"
        rows.append((prefix, desc, dvals))

    walk(s[stage], "", values if values is not None else defaults(stage))
    return rows
