"""Readable API pages from the package's numpy-style docstrings.

The package documents an argument by what it is — ``X : (..., m, n) floating tensor, no slice zero.`` — and a
return value in prose. Napoleon reads the text after ``" : "`` as a *type* and a lone line under ``Returns`` as a
return *type*, which renders as "X ((..., m, n) floating tensor, no slice zero.)" and "Return type: (m, n) tensor …".
Before napoleon runs, this hook turns such entries into descriptions ("X – (..., m, n) floating tensor …") and a
prose ``Returns`` section into an entry without name or type, which napoleon renders as the returned value's
description. Entries whose text is a plain type (``int``, ``str | None``,
``torch.Tensor``) are left to napoleon.
"""
from __future__ import annotations

import re

FIELD_SECTIONS = {"Parameters", "Other Parameters", "Attributes", "Keyword Arguments", "Keyword Args"}
_ONE_TYPE = r"[A-Za-z_][\w.]*(\[[\w., |]+\])?"
TYPE = re.compile(rf"^{_ONE_TYPE}(( \| | or ){_ONE_TYPE})*(, optional)?$")


def _is_header(lines: list[str], i: int) -> bool:
    return (i + 1 < len(lines) and bool(lines[i].strip()) and not lines[i].startswith(" ")
            and re.fullmatch(r"-{3,}", lines[i + 1].strip()) is not None)


def prose_fields(lines: list[str]) -> list[str]:
    """The docstring ``lines`` with prose argument entries and prose ``Returns`` sections rewritten (see above)."""
    out: list[str] = []
    section, i = None, 0
    while i < len(lines):
        if _is_header(lines, i):
            section = lines[i].strip()
            if section == "Returns":
                j = i + 2
                while j < len(lines) and not _is_header(lines, j):
                    j += 1
                body = [b for b in lines[i + 2:j] if b.strip()]
                entries = [b for b in body if not b.startswith(" ")]
                if body and not any(" : " in b or TYPE.match(b.strip()) for b in entries):
                    # an entry with neither name nor type: napoleon renders its text as ":returns:"
                    out += lines[i:i + 2] + [":"] + ["    " + b.strip() for b in body] + [""]
                    i = j
                    continue
            out += lines[i:i + 2]
            i += 2
            continue
        line = lines[i]
        if section in FIELD_SECTIONS and line.strip() and not line.startswith(" ") and " : " in line:
            name, _, rest = line.partition(" : ")
            if not TYPE.match(rest.strip()):
                out += [name.rstrip(), "    " + rest.strip()]
                i += 1
                continue
        out.append(line)
        i += 1
    return out


def _process(app, what, name, obj, options, lines) -> None:
    lines[:] = prose_fields(list(lines))


def setup(app):
    app.setup_extension("sphinx.ext.napoleon")
    app.connect("autodoc-process-docstring", _process, priority=400)  # napoleon's hook runs at 500
    return {"parallel_read_safe": True, "parallel_write_safe": True}
