"""The report page (index.html), the headline (index.md, the terminal), summary columns
without values and selected hyperparameters at the edge of their searched range, on synthetic
records."""

from __future__ import annotations

import base64
import contextlib
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reports import render
from reports.build import build_report
from reports.cli import main
from reports.figures import sensitivity_title
from reports.html import md_to_html, write_page
from reports.synthetic import make_record, make_selection, synthetic_records, write_records
from reports.tables import compute_report
from reports.tables.model import on_edge
from tests.support.records import read_csv

STRATEGIES = ("hat", "ewc", "lwf", "sgd", "joint")
SEEDS = (0, 1, 2)
#: lwf's selection picks the smallest alpha of its range (the temperature inside its range)
LWF_EDGE = {"lwf.alpha": 0.1, "lwf.temperature": 2}


def _records(single: bool = False) -> list[dict]:
    """Task records of syn-3 and syn-5 (no ``single`` unless asked), lwf selected at the
    edge; class records of syn-5."""
    strategies = STRATEGIES + (("single",) if single else ())
    recs = synthetic_records({"syn-3": 3, "syn-5": 5}, strategies, SEEDS, costs=True,
                             hat_stats=True)
    for r in recs:
        if r["strategy"] == "lwf":
            r["selection"] = make_selection(r["scenario"], "lwf", chosen=LWF_EDGE)
            r["params"]["lwf"] = {"alpha": 0.1, "temperature": 2.0}
    return recs + synthetic_records({"syn-5": 5}, ("hat", "sgd", "joint"), SEEDS,
                                    protocol="class")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = build_report(_records(), out, workers=1)
    return result, result.page.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> tuple[Path, list[str]]:
    """``python -m reports`` on the same records: the results folder and the lines printed."""
    results = tmp_path_factory.mktemp("results")
    write_records(results, _records())
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["--results", str(results), "--jobs", "1"]) == 0
    return results, buf.getvalue().splitlines()


class _Page(HTMLParser):
    """Links, images, ids, sections and tables of a page, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.imgs: list[str] = []
        self.ids: set[str] = set()
        self.sections: list[str] = []
        self.tables: list[list[list[str]]] = []  # rows of cells
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        elif tag == "img":
            self.imgs.append(a["src"])
        elif tag == "section":
            self.sections.append(a["id"])
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _section(text: str, scenario: str) -> str:
    start = text.index(f'<section id="s-{scenario}">')
    return text[start:text.index("</section>", start)]


def test_every_figure_and_link_of_the_page_exists(built):
    result, text = built
    page = _parse(text)
    local = [h for h in page.hrefs if not h.startswith("#")]
    assert local and all((result.out / h).is_file() for h in local)
    assert all(h[1:] in page.ids for h in page.hrefs if h.startswith("#"))
    # every PNG of the report is embedded (and is a PNG), none is referenced by path
    pngs = [p for p in result.files if p.suffix == ".png"]
    assert len(page.imgs) == len(pngs) > 0
    for src in page.imgs:
        head, _, data = src.partition(",")
        assert head == "data:image/png;base64"
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert {base64.b64decode(s.partition(",")[2]) for s in page.imgs} == {
        p.read_bytes() for p in pngs}
    # every file written has a link (the page and index.md aside)
    linked = {result.out / h for h in local}
    assert set(result.files) - {result.page, result.index} <= linked
    assert "<style>" in text and "<script" not in text and "http" not in text.split("<body>")[1]


def test_one_section_per_scenario_the_headline_before_the_figures(built):
    _, text = built
    assert _parse(text).sections == ["s-syn-3", "s-syn-5"]
    for sc in ("syn-3", "syn-5"):
        sec = _section(text, sc)
        says = sec.index("What this run says")
        table1 = sec.index(f"{sc}: forgetting ratio ρ≤t")
        summary = sec.index(f"{sc}: final accuracy, backward")
        first_img = sec.index("<img")
        assert says < table1 < summary < first_img
        if sc == "syn-5":  # the Class-IL table with the headline, before any figure
            assert summary < sec.index("class-incremental protocol (Class-IL)") < first_img
        else:
            assert "Class-IL" not in sec


def test_every_table_of_the_headline_has_its_rows(built):
    _, text = built
    for sc in ("syn-3", "syn-5"):
        tables = _parse(_section(text, sc)).tables
        first = [[row[0] for row in t[1:]] for t in tables]
        assert first[0] == ["hat", "ewc", "lwf", "sgd", "HAT reduction of forgetting"]
        assert first[1] == ["hat", "ewc", "lwf", "sgd", "joint"]  # the summary
        assert all(len(row) == len(t[0]) for t in tables for row in t)
        if sc == "syn-5":
            assert first[2] == ["hat", "sgd", "joint (reference)"]


def test_a_summary_column_without_values_is_left_out_with_what_fills_it(built, printed):
    result, text = built
    md = (result.out / "syn-3" / "summary.md").read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| strategy"))
    assert "FWT" not in header and "intransigence (pp)" in header
    line = next(x for x in md.splitlines() if "left out" in x)
    assert line.startswith("- FWT (pp) left out") and "--strategies single" in line
    assert "none for seed(s)" not in md  # the left-out line says it once
    assert "FWT (pp) left out" in text and "FWT (pp)</th>" not in text
    # the terminal says it too
    assert any("FWT (pp) left out (no strategy has a value)" in x for x in printed[1])
    # with the single reference the column is back and nothing is left out
    rep = compute_report(_records(single=True))["syn-3"]
    assert rep.summary_left_out == {}
    header = next(x for x in render.summary_md(rep).splitlines() if x.startswith("| strategy"))
    assert "| FWT (pp) |" in header


def test_selected_values_at_the_edge_of_their_range_are_marked(built):
    result, text = built
    d = result.out / "syn-3"
    md = (d / "hyperparameters.md").read_text(encoding="utf-8")
    assert "lwf.alpha=0.1 (edge)" in md and "lwf.temperature=2 (edge)" not in md
    assert "(edge)" not in next(x for x in md.splitlines() if x.startswith("| hat"))
    assert "lwf.alpha=0.1, the smallest of 0.1..10" in md
    rows = {r["strategy"]: r for r in read_csv(d / "hyperparameters.csv")}
    assert rows["lwf"]["edge"] == "lwf.alpha" and rows["hat"]["edge"] == ""
    rep = result.reports["syn-3"]
    lwf = next(s for s in rep.sensitivity if s.strategy == "lwf")
    assert "alpha = 0.1 (smallest)" in sensitivity_title(lwf)
    hat = next(s for s in rep.sensitivity if s.strategy == "hat")
    assert "edge" not in sensitivity_title(hat)
    assert "lwf was selected at the edge of its searched range" in text


def test_on_edge_flags_the_ends_of_numeric_ranges_of_three_values_or_more():
    space = {"a": [1, 10, 100], "b": ["0.5", "1", "2"], "c": [0, 10], "d": ["x", "y", "z"],
             "e": [1, 2, 3]}
    got = on_edge(space, {"a": 100, "b": "0.5", "c": 0, "d": "x", "e": 2})
    assert [(e.key, e.value, e.side) for e in got] == [("a", 100.0, "largest"),
                                                      ("b", 0.5, "smallest")]
    assert got[0].text() == "a=100, the largest of 1..100"


def _acc(final: float) -> list[list[float]]:
    return [[0.99, 0.5], [final, 0.99]]


def test_findings_name_the_best_with_its_ci_and_say_when_the_runner_up_overlaps():
    finals = {"ewc": (0.90, 0.91, 0.92), "lwf": (0.895, 0.905, 0.93), "sgd": (0.5, 0.52, 0.51)}
    recs = [make_record("f", s, sd, 2, accuracy=_acc(v)) for s, vals in finals.items()
            for sd, v in enumerate(vals)]
    recs += [make_record("f", "joint", sd, 2, accuracy=_acc(0.99)) for sd in range(3)]
    says = render.findings(compute_report(recs)["f"])
    # final accuracy = mean of the last row: ewc (0.99 + 0.91) / 2 on average, lwf close behind
    line = next(x for x in says if x.startswith("Final accuracy"))
    assert line.startswith("Final accuracy: best ewc 95.0 (95% CI ")
    assert "runner-up lwf" in line and "the intervals overlap" in line
    recs = [r for r in recs if r["strategy"] != "lwf"]
    line = next(x for x in render.findings(compute_report(recs)["f"])
                if x.startswith("Final accuracy"))
    assert "runner-up sgd" in line and "do not overlap, ewc is ahead" in line


def test_index_md_and_the_terminal_open_with_the_headline(built, printed):
    result, _ = built
    md = result.index.read_text(encoding="utf-8")
    assert md.index("## syn-3: headline") < md.index("## syn-3\n")
    head = md[md.index("## syn-5: headline"):md.index("## syn-3\n")]
    assert "| strategy | ρ≤2 | ρ≤5 | final accuracy (%) | forgetting (pp) |" in head
    assert "| strategy | last Class-IL accuracy (%)" in head
    results, lines = printed
    assert lines[-1] == f"page: {results / 'report' / 'index.html'}"
    start = lines.index("syn-3, task-incremental, T=3 (mean ± 95% CI over seeds; * best):")
    header = lines[start + 1].split()
    assert header[:3] == ["strategy", "ρ≤2", "ρ≤3"]
    rows = {line.split()[0]: line for line in lines[start + 2:start + 7]}
    assert set(rows) == set(STRATEGIES)
    assert rows["joint"].split()[1] == render.REFERENCE_CELL
    assert sum(line.count("*") for line in rows.values()) >= 4  # a best per column


def test_extra_sections_close_the_page(built):
    result, _ = built
    write_page(result, [("Paper targets", "<p>checked</p>")])
    text = result.page.read_text(encoding="utf-8")
    last = text.rindex("<section")
    assert text.index('<section id="s-syn-5">') < last
    assert "<h2>Paper targets</h2>" in text[last:] and '<a href="#x-0">' in text
    write_page(result)  # as built


def test_markdown_tables_keep_a_pipe_inside_a_cell():
    md = render._md_table(["strategy", "reduction"], [["hat", "Δ|ρ| +0.004"]])
    html = md_to_html(md)
    assert re.findall(r"<td[^>]*>([^<]*)</td>", html) == ["hat", "Δ|ρ| +0.004"]
