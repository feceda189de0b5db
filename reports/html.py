"""The report page ``index.html``: one self-contained file (CSS inline, figures embedded as
PNG data) that opens from disk in any browser.

One section per scenario, in this order: what the run says (:func:`reports.render.findings`),
the headline tables (Table 1, the summary, the Class-IL table: their Markdown files shown as
tables), then every other file of :data:`reports.artifacts.ARTIFACTS` in its order: figures
inline with their captions, tables shown, and links to each artifact's files (CSV, PDF,
LaTeX, Markdown) relative to the page. What is missing (with its command), duplicate records
and notes close each section. ``extra_sections`` (title, HTML fragment) are appended at the
end of the page.
"""

from __future__ import annotations

import base64
import html
import re
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from . import render
from .artifacts import (
    ARTIFACTS,
    Artifact,
    BuildResult,
    StrategyFigure,
    artifact_files,
    safe_name,
)
from .figures import PNG_DPI
from .io import write_text
from .tables import ScenarioReport

__all__ = ["HEADLINE", "md_to_html", "page_html", "write_page"]

#: the artifacts of a section's headline, shown first (patterns of :data:`ARTIFACTS`)
HEADLINE = ("rho_table.*", "rho_reduction.csv", "summary.*", "class_il.*")
#: a paragraph under a table longer than this (characters) is folded (it defines the columns)
LONG_NOTE = 400
#: CSS pixels per inch of a figure on the page (96 would be its size on paper: a bit larger
#: reads better on a screen)
CSS_DPI = 120

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1b1f24; margin: 0 auto; max-width: 1100px; padding: 0 1.2em 3em; }
h1 { font-size: 1.6em; margin: 0.8em 0 0.2em; }
h2 { font-size: 1.35em; border-bottom: 2px solid #d0d7de; padding-bottom: 0.2em;
     margin-top: 2em; }
h3 { font-size: 1.1em; margin: 1.4em 0 0.4em; }
h4 { font-size: 0.98em; margin: 1em 0 0.3em; }
nav a { margin-right: 1em; }
.says { background: #f1f8ff; border-left: 4px solid #0969da; padding: 0.5em 1em; }
.says li { margin: 0.2em 0; }
table { border-collapse: collapse; margin: 0.4em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 0.2em 0.55em; text-align: right;
         white-space: nowrap; }
th { background: #f6f8fa; white-space: normal; vertical-align: bottom; text-align: left; }
.scroll { overflow-x: auto; max-width: 100%; }
details.note summary { cursor: pointer; color: #0969da; }
td:first-child, th:first-child { text-align: left; }
td.text { text-align: left; white-space: normal; }
strong { color: #0a3069; }
.note { font-size: 0.85em; color: #57606a; max-width: 60em; }
.files { font-size: 0.85em; }
.files a { margin-right: 0.7em; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: 0.9em; max-width: 60em; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.8em; }
.gallery figure { margin: 0; max-width: 345px; }
.gallery figcaption { font-size: 0.8em; }
.missing li, .notes li { font-size: 0.9em; }
code { font-size: 0.9em; background: #f6f8fa; padding: 0 0.2em; }
"""


# --- Markdown of the report's own renderers, as HTML ---------------------------------------------


def _inline(text: str) -> str:
    """Escaped text with ``**bold**`` and ```code``` spans."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)


def _row(line: str) -> list[str]:
    """The cells of a pipe-table line (``\\|`` is a ``|`` inside a cell)."""
    inner = line.strip()[1:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def _table(lines: list[str]) -> str:
    header, body = _row(lines[0]), [_row(x) for x in lines[2:]]
    head = "".join(f"<th>{_inline(c)}</th>" for c in header)
    rows = []
    for cells in body:
        tds = "".join(
            f"<td>{_inline(c)}</td>" if i == 0 or not re.search(r"[A-Za-z]{4}", c)
            else f'<td class="text">{_inline(c)}</td>' for i, c in enumerate(cells))
        rows.append(f"<tr>{tds}</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def md_to_html(text: str, heading: str = "h4") -> str:
    """The Markdown the report writes (``# title``, pipe tables, ``- `` lists, paragraphs) as
    HTML; titles become ``heading``."""
    blocks: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("# "):
            blocks.append(f"<{heading}>{_inline(line[2:])}</{heading}>")
            i += 1
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            blocks.append(_table(lines[i:j]))
            i = j
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            blocks.append(f'<ul class="note">{"".join(items)}</ul>')
        else:
            j = i
            while j < len(lines) and lines[j].strip() and not lines[j].startswith(("|", "- ",
                                                                                     "# ")):
                j += 1
            text = _inline(" ".join(lines[i:j]))
            if len(text) > LONG_NOTE:  # a definition of every column: folded
                blocks.append(f'<details class="note"><summary>how these numbers are defined'
                              f"</summary><p>{text}</p></details>")
            else:
                blocks.append(f'<p class="note">{text}</p>')
            i = j
    return "\n".join(blocks)


# --- pieces of a scenario's section ------------------------------------------------------------


def _png_width(data: bytes) -> int | None:
    """The PNG's width in pixels (from its header); None when it is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        return None
    return struct.unpack(">I", data[16:20])[0]


def _img(path: Path, alt: str) -> str:
    """The PNG embedded as data, shown at its size on paper (it is drawn at PNG_DPI)."""
    data = path.read_bytes()
    width = _png_width(data)
    size = f' width="{round(width * CSS_DPI / PNG_DPI)}"' if width else ""
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}"{size} alt="{html.escape(alt)}">'


def _links(rel: str, files: Iterable[tuple[str, str]]) -> str:
    links = " ".join(f'<a href="{html.escape(f"{rel}/{name}")}" title="{html.escape(cap)}">'
                     f"{html.escape(name)}</a>" for name, cap in files)
    return f'<p class="files">files: {links}</p>' if links else ""


def _artifact(artifact: Artifact, rep: ScenarioReport, d: Path, rel: str) -> str:
    """One artifact: its figures inline (captioned), its Markdown tables shown, links to every
    file it wrote."""
    files = [(n, c) for n, c in artifact_files(artifact, rep) if (d / n).is_file()]
    if not files:
        return ""
    parts = []
    if any(isinstance(f, StrategyFigure) for f in artifact.files):
        cells = [f"<figure>{_img(d / n, c)}<figcaption>{html.escape(c)}</figcaption></figure>"
                 for n, c in files]
        return f'<div class="gallery">{"".join(cells)}</div>' + _links(rel, files)
    for name, cap in files:
        if name.endswith(".png"):
            parts.append(f"<figure>{_img(d / name, cap)}<figcaption>{_inline(cap)}"
                         f"</figcaption></figure>")
        elif name.endswith(".md"):
            parts.append(md_to_html((d / name).read_text(encoding="utf-8")))
            parts.append(f'<p class="note">{_inline(cap)}</p>')
    if not parts:  # data files alone (e.g. HAT's reduction as CSV): their captions
        parts = [f'<p class="note">{_inline(cap)}</p>' for _, cap in files]
    return "\n".join(parts) + _links(rel, files)


def _runs(rep: ScenarioReport) -> str:
    """``T = 5; hat × 3 seeds, ...`` of the task-incremental tables (and the class ones)."""
    parts = []
    if rep.strategies:
        parts.append(f"task-incremental, T = {rep.n_tasks}: " + ", ".join(
            f"{s} × {len(rep.seeds[s])}" for s in rep.strategies))
    if rep.class_il is not None:
        parts.append(f"class-incremental, T = {rep.class_il.n_tasks}: " + ", ".join(
            f"{s} × {len(rep.class_il.seeds[s])}" for s in rep.class_il.strategies))
    return "; ".join(parts) + " (strategy × seeds)"


def _section(result: BuildResult, scenario: str, rep: ScenarioReport) -> str:
    rel = safe_name(scenario)
    d = result.out / rel
    sid = f"s-{rel}"
    out = [f'<section id="{html.escape(sid)}">', f"<h2>{html.escape(scenario)}</h2>",
           f'<p class="note">{html.escape(_runs(rep))}</p>']
    says = render.findings(rep)
    if says:
        out.append('<h3>What this run says</h3><ul class="says">'
                   + "".join(f"<li>{_inline(x)}</li>" for x in says) + "</ul>")
    head = [a for a in ARTIFACTS if a.pattern in HEADLINE]
    rest = [a for a in ARTIFACTS if a.pattern not in HEADLINE]
    shown = [x for x in (_artifact(a, rep, d, rel) for a in head) if x]
    if shown:
        out.append("<h3>Headline</h3>")
        out += shown
    shown = [x for x in (_artifact(a, rep, d, rel) for a in rest) if x]
    if shown:
        out.append("<h3>Figures and tables</h3>")
        out += shown
    missing = [m for sc, m in result.missing if sc == scenario]
    if missing:
        out.append('<h3>Not in this report</h3><ul class="missing">' + "".join(
            f"<li>{_inline(m.what)}" + (f": run <code>{html.escape(m.command)}</code>"
                                        if m.command else "") + "</li>" for m in missing)
                   + "</ul>")
    dups = [x for sc, x in result.duplicates if sc == scenario]
    if rep.notes or dups:
        out.append('<h3>Notes</h3><ul class="notes">' + "".join(
            f"<li>{_inline(n)}</li>" for n in [*(x.line() for x in dups), *rep.notes])
                   + "</ul>")
    out.append("</section>")
    return "\n".join(out)


def page_html(result: BuildResult, extra_sections: Sequence[tuple[str, str]] = ()) -> str:
    """The page of a written report (:func:`reports.build.build_report`'s result):
    one section per scenario, then ``extra_sections`` (title, HTML fragment)."""
    scenarios = list(result.reports)
    extra_ids = [f"x-{k}" for k in range(len(extra_sections))]
    nav = [(f"s-{safe_name(s)}", s) for s in scenarios] + [
        (i, t) for i, (t, _) in zip(extra_ids, extra_sections, strict=True)]
    body = [f"<h1>Report: {html.escape(', '.join(scenarios))}</h1>",
            '<p class="note">Generated by <code>python -m reports</code> from run records; '
            "every figure is embedded, its files (PDF, CSV, Markdown, LaTeX) are linked "
            "relative to this page. <code>index.md</code> holds the same for a terminal.</p>",
            "<nav>" + "".join(f'<a href="#{html.escape(i)}">{html.escape(t)}</a>'
                              for i, t in nav) + "</nav>"]
    body += [_section(result, s, rep) for s, rep in result.reports.items()]
    for sid, (title, fragment) in zip(extra_ids, extra_sections, strict=True):
        body.append(f'<section id="{sid}"><h2>{html.escape(title)}</h2>\n{fragment}\n'
                    "</section>")
    title = html.escape(f"Report: {', '.join(scenarios)}")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def write_page(result: BuildResult, extra_sections: Sequence[tuple[str, str]] = ()) -> Path:
    """Write (atomically) the page of ``result`` to ``result.page``; returns its path. May be
    called again on the same result to add ``extra_sections``."""
    return write_text(result.page, page_html(result, extra_sections))
