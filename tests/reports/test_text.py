"""One-line error and warning texts (reports/text.py), shared by both command lines."""

from __future__ import annotations

from reports.text import first_line, one_line, warning_line


def test_first_line_of_a_message_or_the_type_name():
    assert first_line(RuntimeError("no network\nmore detail")) == "no network"
    assert first_line(RuntimeError("  padded  ")) == "padded"
    assert first_line(KeyboardInterrupt()) == "KeyboardInterrupt"


def test_one_line_collapses_whitespace_and_cuts_at_the_limit():
    assert one_line(ValueError("a\n  b\tc")) == "ValueError: a b c"
    assert one_line(OSError()) == "OSError"
    long = ValueError("x" * 400)
    assert one_line(long) == "ValueError: " + "x" * 400
    cut = one_line(long, limit=300)
    assert cut == "ValueError: " + "x" * 297 + "..." and len(cut) == len("ValueError: ") + 300
    assert one_line(ValueError("x" * 300), limit=300) == "ValueError: " + "x" * 300


def test_warning_line():
    assert warning_line("W&B tracking failed") == "warning: W&B tracking failed"
