"""Where the value of a secret ends in free text (``domain.redaction``): an unquoted value may
hold spaces, so it runs to the end of the line, a separator, or the next ``name=``."""

from __future__ import annotations

import pytest

from billingworker.domain.redaction import escape_unprintable, mask, mask_lines, mask_text


@pytest.mark.parametrize(("text", "masked"), [
    # the whole value, spaces and all (an audit detail, a flash, a log line)
    ("set password=correct horse", "set password=***"),
    ("set password=correct horse battery staple", "set password=***"),
    ("pan=4111 1111 1111 1111", "pan=***"),
    ("api_key: abc def\tghi", "api_key: ***"),
    # ... up to the next key, which is kept
    ("set password=correct horse user=bob", "set password=*** user=bob"),
    ("password=a b token=c d, invoice_id=7", "password=*** token=***, invoice_id=7"),
    ("password=a b retries: 3", "password=*** retries: 3"),
    # ... up to the end of the line or a separator
    ("password=correct horse\nnext line", "password=***\nnext line"),
    ("password=correct horse, then the rest", "password=***, then the rest"),
    ("(password=correct horse) done", "(password=***) done"),
    # quoted values end at their quote, as before
    ("password='correct horse' stays", "password=*** stays"),
    ('"password": "correct horse", "user": "bob"', '"password": ***, "user": "bob"'),
    # other keys are untouched, spaces or not
    ("note=correct horse", "note=correct horse"),
])
def test_a_secret_value_with_spaces_is_masked_whole(text, masked):
    assert mask_text(text, None) == masked


def test_the_length_marker_of_a_cut_line_is_kept():
    line = "RuntimeError: password=hunter2 horse " + "x" * 5_000

    masked = mask_lines(line)

    assert "hunter2" not in masked and "horse" not in masked
    assert masked.startswith("RuntimeError: password=***") and masked.endswith("(5037 characters)")


def test_a_correction_echoed_in_an_audit_detail_hides_every_word():
    # what the console's audit row and flash show of a requeue with --set
    detail = mask({"detail": "set password=correct horse\nset pan=4111 1111 1111 1111"})

    assert detail == {"detail": "set password=***\nset pan=***"}


@pytest.mark.parametrize(("said", "kept"), [
    ("declined", "declined"),
    ("line one\nline two\ttab", "line one\nline two\ttab"),
    ("nul\x00 here", "nul\\x00 here"),
    ("\x1b[2Jcleared", "\\x1b[2Jcleared"),
    ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
    ("caf\u00e9 \U0001F600", "caf\u00e9 \U0001F600"),
])
def test_words_from_outside_are_kept_with_control_characters_escaped(said, kept):
    assert escape_unprintable(said) == kept
