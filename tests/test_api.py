"""The API reference documents every module of the package."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_module_is_on_the_api_page():
    documented = set(re.findall(r"^\.\. automodule:: lorabook\.(\w+)", (ROOT / "api.md").read_text(), flags=re.M))
    modules = {p.stem for p in (ROOT / "lorabook").glob("*.py") if not p.stem.startswith("_")}
    assert modules <= documented, f"modules missing from api.md: {sorted(modules - documented)}"
    assert documented <= modules, f"api.md documents modules that do not exist: {sorted(documented - modules)}"


def test_prose_argument_entries_and_returns_become_descriptions():
    import sys

    sys.path.insert(0, str(ROOT / "tools" / "sphinx"))
    from lorabook_api import prose_fields

    doc = ["Summary.", "", "Parameters", "----------", "X : (..., m, n) floating tensor.", "    More text.",
           "rank : int", "name : str | None, optional", "a, b : scalars or ``(B,)`` tensors.", "",
           "Returns", "-------", "(m, n) tensor ``U``", "    of the SVD.", "", "Raises", "------", "ValueError",
           "    when bad."]
    assert prose_fields(doc) == [
        "Summary.", "", "Parameters", "----------", "X", "    (..., m, n) floating tensor.", "    More text.",
        "rank : int", "name : str | None, optional", "a, b", "    scalars or ``(B,)`` tensors.", "",
        "Returns", "-------", ":", "    (m, n) tensor ``U``", "    of the SVD.", "", "Raises", "------", "ValueError", "    when bad."]
    typed = ["Returns", "-------", "int", "    the count.", "out : (n,) tensor", "    values."]
    assert prose_fields(typed) == typed          # a typed or named Returns section is napoleon's
