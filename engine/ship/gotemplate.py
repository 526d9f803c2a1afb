"""A small evaluator of Go's text/template, the subset the Modelfile TEMPLATEs here use, and
Ollama's way of filling it from a conversation.

Why: `export` checks the TEMPLATE it writes against the model's Jinja chat template on a few
conversations before it reports success, and no Go toolchain is needed for that (or for the tests).
The subset: text, ``{{ }}`` actions with ``{{-`` / ``-}}`` trimming, ``if`` / ``else if`` / ``else``
/ ``end``, ``range`` (with ``$i, $x :=``), ``$var :=`` and ``$var =``, fields (``.Role``, ``$.Messages``,
``$x.Content``), string and integer literals, parentheses, and the built-in functions ``eq``,
``ne``, ``and``, ``or``, ``not``, ``len``, ``slice``, ``index``. Anything else is refused with
``ValueError`` (a template outside the subset is not silently rendered wrong). Truth is Go's:
false, 0, "", nil and empty lists are false; ``and``/``or`` return an argument, as in Go.

``ollama_values`` gives the data Ollama passes (template/template.go ``Execute`` and ``collate``):
``.System`` is every system message joined by a blank line, ``.Messages`` the conversation with
consecutive messages of one role merged (``"\\n\\n"``), system messages included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
TOKEN = re.compile(
    r'\s*("(?:[^"\\]|\\.)*"|\(|\)|:=|=|,|\$?[A-Za-z_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\$[A-Za-z_0-9]*|\.|-?\d+|[A-Za-z_]\w*)'
)


@dataclass
class Node:
    kind: str  # text, out, set, if, range
    text: str = ""
    expr: list = field(default_factory=list)
    names: list = field(default_factory=list)
    body: list = field(default_factory=list)
    orelse: list = field(default_factory=list)


def _lex(source: str) -> list[tuple[str, str]]:
    """[(text|action, content)] with Go's trim markers applied to the neighbouring text."""
    parts, pos, trim_next = [], 0, False
    for m in ACTION.finditer(source):
        text = source[pos : m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        parts.append(("text", text))
        parts.append(("action", m.group(2).strip()))
        trim_next, pos = bool(m.group(3)), m.end()
    tail = source[pos:]
    parts.append(("text", tail.lstrip() if trim_next else tail))
    return parts


def _tokens(expr: str) -> list[str]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise ValueError(f"template: cannot read {expr[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def parse(source: str) -> list[Node]:
    parts = _lex(source)
    nodes, i = _parse_list(parts, 0, top=True)
    return nodes


def _parse_list(parts, i: int, top: bool = False) -> tuple[list[Node], int]:
    nodes = []
    while i < len(parts):
        kind, content = parts[i]
        if kind == "text":
            if content:
                nodes.append(Node("text", text=content))
            i += 1
            continue
        word = content.split(None, 1)[0] if content else ""
        if word in ("end", "else"):
            if top:
                raise ValueError(f"template: unexpected {{{{ {content} }}}}")
            return nodes, i
        if word in ("if", "range"):
            node, i = _parse_block(parts, i, word, content[len(word) :])
            nodes.append(node)
            continue
        if word in ("with", "define", "template", "block", "break", "continue"):
            raise ValueError(f"template: {{{{ {word} }}}} is outside the subset this evaluator knows")
        toks = _tokens(content)
        if len(toks) > 2 and toks[0].startswith("$") and toks[1] == ":=":
            nodes.append(Node("set", names=[toks[0]], expr=toks[2:]))
        elif len(toks) > 2 and toks[0].startswith("$") and toks[1] == "=":
            nodes.append(Node("assign", names=[toks[0]], expr=toks[2:]))
        else:
            nodes.append(Node("out", expr=toks))
        i += 1
    if not top:
        raise ValueError("template: missing {{ end }}")
    return nodes, i


def _parse_block(parts, i: int, word: str, rest: str) -> tuple[Node, int]:
    toks = _tokens(rest)
    node = Node(word)
    if word == "range" and ":=" in toks:
        at = toks.index(":=")
        node.names = [t for t in toks[:at] if t != ","]
        toks = toks[at + 1 :]
    node.expr = toks
    node.body, i = _parse_list(parts, i + 1)
    content = parts[i][1]
    if content.startswith("else"):
        tail = content[4:].strip()
        if tail.startswith("if "):  # else if: a nested if that shares this block's end
            inner, i = _parse_block(parts, i, "if", tail[2:])
            node.orelse = [inner]
            return node, i
        node.orelse, i = _parse_list(parts, i + 1)
    if parts[i][1] != "end":
        raise ValueError(f"template: expected {{{{ end }}}}, found {{{{ {parts[i][1]} }}}}")
    return node, i + 1


def truth(v) -> bool:
    return bool(v) if v is not None else False


def _field(value, names: list[str]):
    for name in names:
        value = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
    return value


class _Scope:
    def __init__(self, data):
        self.data = data
        self.vars = [{"$": data}]

    def get(self, name: str):
        for frame in reversed(self.vars):
            if name in frame:
                return frame[name]
        raise ValueError(f"template: undefined variable {name}")


FUNCS = {
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "not": lambda a: not truth(a),
    "len": lambda a: len(a),
    "slice": lambda a, i=0, j=None: a[i:j],
    "index": lambda a, *keys: _index(a, keys),
}


def _index(a, keys):
    for k in keys:
        a = a[k]
    return a


def _eval(toks: list[str], dot, scope: _Scope):
    args, i = [], 0
    while i < len(toks):
        t = toks[i]
        if t == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(toks[j], 0)
                j += 1
            args.append(("value", _eval(toks[i + 1 : j - 1], dot, scope)))
            i = j
            continue
        args.append(("tok", t))
        i += 1
    head_kind, head = args[0]
    if head_kind == "tok" and head in ("and", "or"):
        vals = [_operand(a, dot, scope) for a in args[1:]]
        for v in vals:
            if truth(v) != (head == "and"):
                return v
        return vals[-1]
    if head_kind == "tok" and head in FUNCS:
        return FUNCS[head](*[_operand(a, dot, scope) for a in args[1:]])
    if len(args) != 1:
        raise ValueError(f"template: {head!r} is not a function this evaluator knows")
    return _operand(args[0], dot, scope)


def _operand(arg, dot, scope: _Scope):
    kind, t = arg
    if kind == "value":
        return t
    if t.startswith('"'):
        return bytes(t[1:-1], "utf-8").decode("unicode_escape")
    if re.fullmatch(r"-?\d+", t):
        return int(t)
    if t in ("true", "false"):
        return t == "true"
    if t == ".":
        return dot
    if t.startswith("."):
        return _field(dot, t[1:].split("."))
    if t.startswith("$"):
        var, _, rest = t.partition(".")
        value = scope.get(var)
        return _field(value, rest.split(".")) if rest else value
    raise ValueError(f"template: {t!r} is not a value this evaluator knows")


def _text(v) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _run(nodes: list[Node], dot, scope: _Scope, out: list[str]) -> None:
    for n in nodes:
        if n.kind == "text":
            out.append(n.text)
        elif n.kind == "out":
            out.append(_text(_eval(n.expr, dot, scope)))
        elif n.kind == "set":
            scope.vars[-1][n.names[0]] = _eval(n.expr, dot, scope)
        elif n.kind == "assign":  # Go's `$x = v`: the variable where it was declared
            frame = next((f for f in reversed(scope.vars) if n.names[0] in f), None)
            if frame is None:
                raise ValueError(f"template: undefined variable {n.names[0]}")
            frame[n.names[0]] = _eval(n.expr, dot, scope)
        elif n.kind == "if":
            scope.vars.append({})
            _run(n.body if truth(_eval(n.expr, dot, scope)) else n.orelse, dot, scope, out)
            scope.vars.pop()
        elif n.kind == "range":
            items = _eval(n.expr, dot, scope) or []
            pairs = items.items() if isinstance(items, dict) else enumerate(items)
            ran = False
            for k, v in pairs:
                ran = True
                frame = {}
                if len(n.names) == 1:
                    frame[n.names[0]] = v
                elif len(n.names) == 2:
                    frame[n.names[0]], frame[n.names[1]] = k, v
                scope.vars.append(frame)
                _run(n.body, v, scope, out)
                scope.vars.pop()
            if not ran:
                _run(n.orelse, dot, scope, out)


def render(source: str, data: dict) -> str:
    out: list[str] = []
    _run(parse(source), data, _Scope(data), out)
    return "".join(out)


def ollama_values(messages: list[dict]) -> dict:
    """What Ollama passes to a TEMPLATE for a chat request (see the module docstring)."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    collated: list[dict] = []
    for m in messages:
        if collated and collated[-1]["Role"] == m["role"] and m["role"] != "tool":
            collated[-1]["Content"] += "\n\n" + m["content"]
        else:
            collated.append({"Role": m["role"], "Content": m["content"]})
    return {"System": "\n\n".join(system), "Messages": collated, "Tools": None, "Response": "", "Prompt": ""}


def render_chat(source: str, messages: list[dict]) -> str:
    return render(source, ollama_values(messages))
