"""The config reference, generated from the config dataclasses themselves: docs/config.md and `config --explain`.

Every key's type and default come from the dataclass (defaults as the flow uses them, i.e. FlowConfig()'s values,
which may differ from a stage class's own default); its meaning from the comment on or right above the field in
the source; its allowed values from a Literal type, an `if self.key not in CHOICES` check, or the "must ..." part
of the FlowError its class's __post_init__ raises. Nothing is written by hand, so after changing a config class:

    .venv/bin/python -m trimflow.config_docs          # rewrites docs/config.md (tests/test_config_docs.py checks it)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import io
import re
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

from trimflow import FlowError

DOCS_PATH = Path(__file__).resolve().parent.parent / "docs" / "config.md"


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted path, e.g. trim.budget
    type: str
    default: Any
    allowed: str  # "" when any value of the type is accepted
    meaning: str
    section: bool = False  # a nested config (its keys follow)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "str"
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _comments(cls: type) -> dict[str, str]:
    """field name → the comment on its line(s), after the comment block right above it."""
    lines, _ = inspect.getsourcelines(cls)
    source = textwrap.dedent("".join(lines))
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    code_lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        n = node.lineno - 1
        while n in by_line and code_lines[n - 1].lstrip().startswith("#"):
            above.insert(0, by_line[n])
            n -= 1
        trailing = [by_line[i] for i in range(node.lineno, node.end_lineno + 1) if i in by_line]
        out[node.target.id] = " ".join(above + trailing)
    return out


def _render(node: ast.expr, glb: dict, loop_var: str | None, field: str) -> str:
    """The text of a FlowError message: literal parts kept, module constants evaluated, the rest elided."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if not isinstance(node, ast.JoinedStr):
        return ""
    parts = []
    for v in node.values:
        if isinstance(v, ast.Constant):
            parts.append(str(v.value))
        elif isinstance(v, ast.FormattedValue):
            expr = v.value
            if isinstance(expr, ast.Name) and expr.id == loop_var:
                parts.append(field)
                continue
            try:
                if any(isinstance(n, ast.Name) and n.id == "self" for n in ast.walk(expr)):
                    raise NameError
                parts.append(format(eval(compile(ast.Expression(expr), "<doc>", "eval"), dict(glb))))  # noqa: S307
            except Exception:
                parts.append("…")
    return "".join(parts)


def _allowed_from_checks(cls: type) -> dict[str, str]:
    """field → allowed values, read from the `if <bad>: raise FlowError(...)` checks in __post_init__."""
    post = getattr(cls, "__post_init__", None)
    if post is None:
        return {}
    glb = sys.modules[cls.__module__].__dict__
    tree = ast.parse(textwrap.dedent(inspect.getsource(post)))
    out: dict[str, str] = {}

    def visit(stmts: list[ast.stmt], loop_fields: tuple[str, ...], loop_var: str | None) -> None:
        for st in stmts:
            if isinstance(st, ast.For) and isinstance(st.target, ast.Name) and isinstance(st.iter, ast.Tuple):
                names = tuple(e.value for e in st.iter.elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
                visit(st.body, names, st.target.id)
            elif isinstance(st, ast.If):
                check(st, loop_fields, loop_var)
                visit(st.orelse, loop_fields, loop_var)

    def check(st: ast.If, loop_fields: tuple[str, ...], loop_var: str | None) -> None:
        fields = {n.attr for n in ast.walk(st.test) if isinstance(n, ast.Attribute)
                  and isinstance(n.value, ast.Name) and n.value.id == "self"}
        # Several keys in one condition joined by "and" are an interplay of keys, not one key's range; a check in
        # a loop over key names applies to each of them
        if (fields and len(fields) != 1
                and not (isinstance(st.test, ast.BoolOp) and isinstance(st.test.op, ast.Or))):
            return
        fields = fields or set(loop_fields)
        raise_ = next((s for s in st.body if isinstance(s, ast.Raise) and isinstance(s.exc, ast.Call)), None)
        if raise_ is None:  # e.g. `if key not in CHOICES:` guarding a nested check for the other accepted form
            visit(st.body, loop_fields, loop_var)
            return
        test = st.test
        if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.NotIn)
                and len(fields) == 1):
            try:
                choices = eval(compile(ast.Expression(test.comparators[0]), "<doc>", "eval"), dict(glb))  # noqa: S307
                out.setdefault(next(iter(fields)), "one of " + ", ".join(map(str, choices)))
                return
            except Exception:
                pass
        if not raise_.exc.args:  # type: ignore[union-attr]
            return
        for field in fields:
            text = _render(raise_.exc.args[0], glb, loop_var, field)  # type: ignore[union-attr]
            m = re.search(r"\b(must .*?)(?:[,;] got\b|$)", text, re.S)
            if m:
                out.setdefault(field, re.sub(r"\s+", " ", m.group(1)).strip())

    visit(tree.body[0].body, (), None)  # type: ignore[attr-defined]
    return out


def _class_doc(cls: type) -> str:
    """The class's own docstring; "" for the signature dataclasses put there when it has none."""
    doc = cls.__doc__ or ""
    return "" if doc.startswith(cls.__name__ + "(") else inspect.cleandoc(doc)


def config_keys(cls: type | None = None, default: Any = None, prefix: str = "") -> list[KeyDoc]:
    """Every key of FlowConfig (or `cls`) in source order, nested configs as sections followed by their keys."""
    if cls is None:
        from trimflow.config import FlowConfig
        cls, default = FlowConfig, FlowConfig()
    hints = typing.get_type_hints(cls)
    comments, allowed = _comments(cls), _allowed_from_checks(cls)
    out: list[KeyDoc] = []
    for f in dataclasses.fields(cls):
        tp, value, key = hints[f.name], getattr(default, f.name), prefix + f.name
        if dataclasses.is_dataclass(tp):
            doc = " ".join(s for s in (_class_doc(tp), comments.get(f.name, "")) if s)
            out.append(KeyDoc(key, tp.__name__, None, "", doc, section=True))
            out.extend(config_keys(tp, value, key + "."))
            continue
        choices = ", ".join(map(str, typing.get_args(tp))) if typing.get_origin(tp) is typing.Literal else ""
        out.append(KeyDoc(key, _type_name(tp), value, ("one of " + choices) if choices else allowed.get(f.name, ""),
                          comments.get(f.name, "")))
    return out


def _value(v: Any) -> str:
    from trimflow.config_parsing import to_dict
    import yaml
    return yaml.safe_dump(to_dict(v), default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(keys: list[KeyDoc] | None = None) -> str:
    keys = config_keys() if keys is None else keys
    out = ["# trimflow config reference", "",
           "Generated from the config dataclasses by `.venv/bin/python -m trimflow.config_docs`; do not edit by "
           "hand (`tests/test_config_docs.py` fails when it is stale).", "",
           "Every key can be set in a YAML file (`--config my.yaml`, nested as the dots show) or on the command "
           "line (`--set trim.budget=0.4 --set quantize.weight_bits=2`; values are parsed as YAML). Defaults are "
           "the flow's. `trimflow config --explain KEY` prints one entry; `trimflow config` the effective config.",
           ""]
    header = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    # a section's own keys in one table, its nested sections after it
    sections: dict[str, tuple[str, list[KeyDoc]]] = {"": ("", [])}
    for k in keys:
        if k.section:
            sections[k.key] = (k.meaning, [])
        else:
            sections[k.key.rpartition(".")[0]][1].append(k)
    for name, (meaning, members) in sections.items():
        out += [f"## {name or 'top level'}", ""] + ([_cell(meaning), ""] if meaning else []) + header
        out += [f"| `{k.key}` | {_cell(k.type)} | `{_cell(_value(k.default))}` | {_cell(k.allowed)} | "
                f"{_cell(k.meaning)} |" for k in members] + [""]
    return "\n".join(out).rstrip("\n") + "\n"


def explain(key: str) -> str:
    """One key (or a whole section) as plain text; an unknown key is a FlowError with the closest names."""
    keys = config_keys()
    by_key = {k.key: k for k in keys}
    if key not in by_key:
        close = difflib.get_close_matches(key, list(by_key), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see docs/config.md for every key"
        raise FlowError(f"config --explain: no key {key!r}{hint}")
    k = by_key[key]
    if k.section:
        members = [m for m in keys if m.key.startswith(key + ".") and not m.section]
        lines = [f"{key}: section ({k.type})"] + ([f"  {k.meaning}"] if k.meaning else [])
        return "\n".join(lines + [f"  {m.key} = {_value(m.default)}" for m in members])
    lines = [f"{k.key}", f"  type:    {k.type}", f"  default: {_value(k.default)}"]
    if k.allowed:
        lines.append(f"  allowed: {k.allowed}")
    if k.meaning:
        lines.append("  meaning: " + textwrap.fill(k.meaning, 100, subsequent_indent=" " * 11))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trimflow.config_docs", description="write docs/config.md")
    p.add_argument("--out", type=Path, default=DOCS_PATH)
    p.add_argument("--check", action="store_true", help="exit 1 when the file differs from the generated text")
    args = p.parse_args(argv)
    text = render_markdown()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run .venv/bin/python -m trimflow.config_docs", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({sum(not k.section for k in config_keys())} keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
