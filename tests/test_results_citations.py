"""Code comments and docs cite a measurement by its section of bench/RESULTS.md, the file name then
the section's name in double quotes. Every cited section must be a heading of that file, so that the
reader who follows a citation finds the figures it promises (the file is rewritten from time to time)."""

import re
from pathlib import Path

from tests.support import PROJECT

RESULTS = PROJECT / "bench" / "RESULTS.md"
_CITING_FOLDERS = ("api", "bench", "docs", "tests")
_SKIPPED_PARTS = {"node_modules", "results", "__pycache__"}
# `RESULTS.md, "Third session" and "Fourth session"`: the names after the file, in quotes.
_CITATION = re.compile(r'RESULTS\.md,\s*((?:"[^"]+"(?:\s*(?:,|and)\s*)?)+)')


def _citing_files() -> list[Path]:
    found = [PROJECT / "README.md"]
    for folder in _CITING_FOLDERS:
        found += [
            path
            for path in sorted((PROJECT / folder).rglob("*"))
            if path.suffix in {".py", ".md"}
            and not _SKIPPED_PARTS & set(path.relative_to(PROJECT).parts)
            and path not in {RESULTS, Path(__file__).resolve()}
        ]
    return found


def cited_sections(text: str) -> list[str]:
    """The section names cited in `text`, a citation's lines joined as one (comment marks dropped)."""
    joined = re.sub(r"\s*\n\s*(?:#\s*)?", " ", text)
    return [name for names in _CITATION.findall(joined) for name in re.findall(r'"([^"]+)"', names)]


def headings(markdown: str) -> list[str]:
    return re.findall(r"^#+ (.+?)\s*$", markdown, re.MULTILINE)


def names_a_heading(name: str, existing: list[str]) -> bool:
    """A citation names a heading by all of it, or by what precedes its date or its colon."""
    return any(heading == name or heading.startswith((f"{name} (", f"{name}:")) for heading in existing)


def test_every_cited_results_section_is_a_heading_of_results_md() -> None:
    existing = headings(RESULTS.read_text(encoding="utf-8"))
    citations = [
        (path.relative_to(PROJECT), name)
        for path in _citing_files()
        for name in cited_sections(path.read_text(encoding="utf-8"))
    ]
    assert len({path for path, _ in citations}) >= 5, f"the search found too few citations: {citations}"
    missing = [f'{path} cites "{name}"' for path, name in citations if not names_a_heading(name, existing)]
    assert not missing, "bench/RESULTS.md has no such heading:\n" + "\n".join(missing)


def test_the_citation_finder_reads_citations_split_over_lines() -> None:
    text = (
        '# it cost a seventh (bench/RESULTS.md,\n    # "Fourth session"). And (RESULTS.md, "Third'
        '\nsession" and "Search"; measured) but not "Other".'
    )
    assert cited_sections(text) == ["Fourth session", "Third session", "Search"]
    assert names_a_heading("Fifth session", ["Fifth session (2026-11-29): prepared statements"])
    assert not names_a_heading("Fifth", ["Fifth session (2026-11-29)"])
