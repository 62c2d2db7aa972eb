"""The repository's text cites only documents a clone has: docs/method.md, by sections it holds."""

from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
SCANNED = [
    REPO / "README.md",
    *(REPO / d for d in ("beex_jax", "configs", "experiments", "tests", "docs")),
]
SUFFIXES = {".py", ".md", ".txt", ".toml"}

# The upper-case name as a word, or its file name in any case; names such as `SPECIAL_TOKENS` or
# `glue_builder.SPECS` and the word "spec" do not match. Built from pieces so that this file does
# not match itself.
OUTSIDE_DOC = re.compile(r"\b" + "SP" + r"EC\b|(?i:" + "sp" + r"ec\.md)")
METHOD_REF = re.compile("method" + r"\.md §(\d+)(?:\s*-\s*§?(\d+))?")


def _text_files() -> list[pathlib.Path]:
    files = []
    for root in SCANNED:
        candidates = [root] if root.is_file() else sorted(root.rglob("*"))
        files += [p for p in candidates if p.is_file() and p.suffix in SUFFIXES]
    return files


def _method_sections() -> set[int]:
    text = (REPO / "docs" / "method.md").read_text(encoding="utf-8")
    return {int(n) for n in re.findall(r"^## (\d+)\. ", text, flags=re.MULTILINE)}


def test_no_reference_to_a_document_outside_the_repository():
    hits = []
    for path in _text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE_DOC.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, "cite docs/method.md instead:\n" + "\n".join(hits)


def test_method_references_name_existing_sections():
    sections = _method_sections()
    assert sections == set(range(1, len(sections) + 1)), sections
    bad, seen = [], 0
    for path in _text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in METHOD_REF.finditer(line):
                seen += 1
                cited = {int(g) for g in match.groups() if g is not None}
                if not cited <= sections:
                    bad.append(f"{path.relative_to(REPO)}:{number}: {match.group(0)}")
    assert seen > 0, "no docs/method.md § references found: is the pattern still right?"
    assert not bad, f"docs/method.md has sections {sorted(sections)}:\n" + "\n".join(bad)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_markdown_links_resolve():
    bad = []
    for path in (p for p in _text_files() if p.suffix == ".md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                bad.append(f"{path.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", dest.read_text(encoding="utf-8"), re.MULTILINE)
                if anchor not in {_anchor(h) for h in headings}:
                    bad.append(f"{path.relative_to(REPO)}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


EXPERIMENT_KINDS = ("benchmarks", "sweeps", "probes")


def test_every_experiment_script_documents_its_command_and_is_listed():
    """Each runnable script under experiments/<kind>/ names `python experiments/<kind>/<it>.py`
    in its docstring, and experiments/README.md lists it; no script is left at the top level."""
    import ast

    listing = (REPO / "experiments" / "README.md").read_text(encoding="utf-8")
    problems, scripts = [], 0
    for kind in EXPERIMENT_KINDS:
        for path in sorted((REPO / "experiments" / kind).glob("*.py")):
            source = path.read_text(encoding="utf-8")
            if "__main__" not in source:
                continue  # A library of the scripts beside it.
            scripts += 1
            command = f"python {path.relative_to(REPO)}"
            if command not in (ast.get_docstring(ast.parse(source)) or ""):
                problems.append(f"{path.relative_to(REPO)}: docstring lacks `{command}`")
            if f"`{path.name}`" not in listing:
                problems.append(f"experiments/README.md does not list {path.name}")
    top = [p.name for p in (REPO / "experiments").glob("*.py") if "__main__" in p.read_text()]
    assert scripts >= 19 and not top, (scripts, top)
    assert not problems, "\n".join(problems)
