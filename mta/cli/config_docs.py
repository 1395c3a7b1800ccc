"""Write docs/configs.md: every config key with its type, default, allowed values and meaning.

    python scripts/config_docs.py            # (re)writes docs/configs.md
    python scripts/config_docs.py --check    # exit 1 if docs/configs.md is out of date

The meanings are the comments beside (or directly above) each field in mta/config/schema.py and, for
the task sections `data.<task>`, in the task's module of mta/data/tasks/, so the schema stays
the one source of truth; a field without a comment is an error (exit 2). Types are the
annotations as written, defaults those of `Config()`, allowed values what `validate` says when
probed with bad values. The members of a list (`data.mixture[i]`) list only their own keys: a
section already listed (a task's settings) is named, not repeated.
"""

import ast
import dataclasses
import inspect
import io
import re
import sys
import tokenize
import typing
from pathlib import Path

import yaml

from mta import config as config_module
from mta.cli.args import command_parser
from mta.config import schema as schema_module

REPO = Path(__file__).resolve().parents[2]  # a checkout: this command maintains its docs/

OUTPUT = REPO / "docs" / "configs.md"
COMMAND = "python scripts/config_docs.py"
NOQA = re.compile(r"^noqa(:\s*[A-Z]+[0-9]+(,\s*[A-Z]+[0-9]+)*)?\s*")


class MissingComment(ValueError):
    """A config field has no comment to take its meaning from."""


def _clean(comment: str) -> str:
    """A comment's text without '#', a leading `noqa: ...` and surrounding blanks."""
    return NOQA.sub("", comment.lstrip("#").strip()).strip()


def _comments_by_line(source: str) -> tuple[dict[int, str], set[int]]:
    """({line: comment text}, lines holding only a comment) of Python source."""
    comments, code_lines = {}, set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = _clean(tok.string)
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    return comments, set(comments) - code_lines


def _meaning(stmt: ast.AnnAssign, comments: dict[int, str], own_lines: set[int]) -> str | None:
    """The trailing comment of a field's first or last line, else the comment lines above it."""
    for line in (stmt.lineno, stmt.end_lineno):
        if line in comments and line not in own_lines:
            return comments[line]
    above, line = [], stmt.lineno - 1
    while line in own_lines:
        above.insert(0, comments[line])
        line -= 1
    return " ".join(above) or None


def field_docs(source: str) -> dict[tuple[str, str], dict]:
    """{(class name, field name): {"type": annotation as written, "meaning": comment or None}}
    for every annotated field of every class in `source`, and {"meaning": docstring} under
    (class name, "__doc__") for the classes that have one."""
    comments, own_lines = _comments_by_line(source)
    docs = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        if ast.get_docstring(node):
            docs[(node.name, "__doc__")] = {"meaning": ast.get_docstring(node)}
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                docs[(node.name, stmt.target.id)] = {
                    "type": ast.unparse(stmt.annotation),
                    "meaning": _meaning(stmt, comments, own_lines),
                }
    return docs


def format_default(value) -> str:
    """A default as it would be written in a YAML config (flow style, one line)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    return text.removesuffix("...\n").strip()


# Values tried on each key to make `validate` say what it allows (by the default's type).
PROBES = {str: ["\x00not a value"], int: [0, -1], float: [0.0, -1.0]}


def _rejection(key: str, value) -> str | None:
    """What `validate` says of the default config with `key` set to `value`: its message if it
    rejects that key, else None."""
    try:
        cfg = config_module.Config()
        *parents, name = key.split(".")
        node = cfg
        for part in parents:
            node = getattr(node, part)
        setattr(node, name, value)
        config_module.validate(cfg)
    except config_module.ConfigError as err:
        parent = key.rsplit(".", 1)[0]
        named = (
            f"{key}:",
            f"{parent}: {name} ",
        )  # a task's check names the field after its section
        return str(err) if str(err).startswith(named) else None
    except Exception:  # a key inside a list, or a value the checks cannot compare
        return None
    return None


def allowed(key: str, default) -> str:
    """The values `validate` accepts for `key` as it words them ('' if it checks nothing): the
    config's own checks are the one source, probed with values it should reject."""
    for value in PROBES.get(type(default), []):
        message = _rejection(key, value)
        for marker in ("allowed: ", "must be "):
            if message and marker in message:
                return message.split(marker, 1)[1].split(", got ")[0]
    return ""


def _doc(cls, name: str, docs: dict) -> dict:
    """The doc of field (or "__doc__") `name` of `cls`, from the class that defines it."""
    for klass in cls.__mro__:
        if (klass.__name__, name) in docs:
            return docs[(klass.__name__, name)]
    return {}


def collect(
    cls, instance, docs: dict, prefix: str = "", seen: dict | None = None
) -> tuple[list[dict], list[dict]]:
    """(sections, keys) below a config dataclass: a section per nested dataclass field, a key
    per leaf field, in declaration order; inside a list's element, a section whose dataclass is
    listed already (in `seen`: class -> key) is named, not repeated. MissingComment names every
    field without a meaning."""
    sections, keys, missing = [], [], []
    seen = {} if seen is None else seen
    fields = sorted(dataclasses.fields(cls), key=lambda f: _list_element(f.type) is not None)
    for f in fields:  # lists last, so that their elements can name sections listed before
        key, doc = f"{prefix}{f.name}", _doc(cls, f.name, docs)
        value = getattr(instance, f.name)
        meaning = doc.get("meaning")
        element = _list_element(f.type)
        if not dataclasses.is_dataclass(value) and not meaning:
            missing.append(f"{cls.__name__}.{f.name} ({key})")
            continue
        if not dataclasses.is_dataclass(value):
            row = {"key": key, "type": doc["type"], "default": format_default(value)}
            keys.append(row | {"allowed": allowed(key, value), "meaning": meaning})
        nested = [(key, value)] if dataclasses.is_dataclass(value) else []
        nested += [(f"{key}[i]", element())] if element else []
        for sub_key, sub_value in nested:
            meaning_of = _section_meaning(meaning, sub_value, docs)
            if "[i]" in sub_key and type(sub_value) in seen:
                meaning_of += f" Same keys as `{seen[type(sub_value)]}`."
                sections.append({"key": sub_key, "meaning": meaning_of})
                continue
            seen.setdefault(type(sub_value), sub_key)
            sections.append({"key": sub_key, "meaning": meaning_of})
            try:
                sub_sections, sub_keys = collect(
                    type(sub_value), sub_value, docs, f"{sub_key}.", seen
                )
            except MissingComment as err:
                missing.append(str(err))
                continue
            sections += sub_sections
            keys += sub_keys
    if missing:
        raise MissingComment(", ".join(missing))
    return sections, keys


def _list_element(annotation):
    """The dataclass X of a `list[X]` annotation, else None."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) is list else ()
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def _section_meaning(comment: str | None, value, docs: dict) -> str:
    """A section's description: the field's comment, then its class's docstring."""
    parts = [comment, _doc(type(value), "__doc__", docs).get("meaning")]
    text = ". ".join(p[0].upper() + p[1:].rstrip(".") for p in parts if p) + "."
    return " ".join(text.split())


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


HEADER = f"""# Config keys

Generated from the dataclasses of [`mta/config/schema.py`](../mta/config/schema.py) and of the
task modules in [`mta/data/tasks/`](../mta/data/tasks) (the sections `data.<task>`) by
`{COMMAND}`: do not edit by hand. The meanings are the comments beside each
field there: edit those and regenerate (`tests/test_docs.py` fails while this file is out of
date).

A config is a YAML file of these sections (see [`configs/`](../configs)); any key can also be
overridden on the command line with its dotted name, e.g.
`python scripts/train.py --config C --workdir W model.attention.kq_pre.c_k=9 train.steps=200`.
An unknown key, a wrong type or a value outside "allowed" stops the run with one line naming the
key (exit code 2).
"""


def _task_sources() -> list[str]:
    """The sources of the modules defining the task settings (and their bases)."""
    modules = {
        klass.__module__
        for task in config_module.TASKS.values()
        for klass in task.settings.__mro__
        if klass is not object
    }
    return [inspect.getsource(sys.modules[name]) for name in sorted(modules)]


def render(source: str | None = None) -> str:
    """The text of docs/configs.md for the config module's source (default: the current one)
    and the task modules' sources."""
    source = source if source is not None else Path(schema_module.__file__).read_text()
    docs = {}
    for text in [*_task_sources(), source]:
        docs |= field_docs(text)
    sections, keys = collect(config_module.Config, config_module.Config(), docs)
    lines = [HEADER, "## Sections", "", "| section | what it holds |", "|---|---|"]
    lines += [f"| `{s['key']}` | {_cell(s['meaning'])} |" for s in sections]
    lines += ["", "## Keys", "", "| key | type | default | allowed | meaning |", "|" + "---|" * 5]
    for row in keys:
        cells = [_code(row["key"]), _code(row["type"]), _code(row["default"])]
        cells += [row["allowed"], row["meaning"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None, prog=None) -> int:
    parser = command_parser(__doc__, prog)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="default docs/configs.md")
    args = parser.parse_args(argv)
    try:
        text = render()
    except MissingComment as err:
        print(
            f"error: config fields without a comment in mta/config/schema.py: {err}",
            file=sys.stderr,
        )
        return 2
    if args.check:
        current = args.output.read_text() if args.output.is_file() else None
        if current != text:
            print(f"{args.output} is out of date; regenerate it with: {COMMAND}", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(keys_of(text))} keys)", file=sys.stderr)
    return 0


def keys_of(text: str) -> list[str]:
    """The dotted keys listed in a rendered docs/configs.md."""
    return re.findall(r"^\| `([a-z_.0-9\[\]]+)` \| `", text, flags=re.MULTILINE)


if __name__ == "__main__":
    sys.exit(main())
