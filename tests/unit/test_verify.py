"""Soft verification: changed-line recall and the resolved verdict, with SERA's hunk-header bug fixed
(docs/sera-behaviour.md#soft-verification)."""
import pytest

from sera_ops.verify import changed_lines, is_resolved, line_recall, verify

P1 = """diff --git a/pkg/mod.py b/pkg/mod.py
index 1111111..2222222 100644
--- a/pkg/mod.py
+++ b/pkg/mod.py
@@ -1,4 +1,5 @@
 def total(xs):
-    return sum(xs)
+    result = sum(xs)
+    return result
""" + " \n"

SAME_LINES_OTHER_FILE = P1.replace("pkg/mod.py", "pkg/other.py")

PARTIAL = """diff --git a/pkg/mod.py b/pkg/mod.py
--- a/pkg/mod.py
+++ b/pkg/mod.py
@@ -1,3 +1,4 @@
 def total(xs):
-    return sum(xs)
+    value = sum(xs)
+    return value
"""

SQL_COMMENT = """diff --git a/db/schema.sql b/db/schema.sql
--- a/db/schema.sql
+++ b/db/schema.sql
@@ -1,3 +1,3 @@
 CREATE TABLE t (id int);
--- old comment
+++ new counter
 SELECT 1;
"""


def test_changed_lines_keep_sign_and_whitespace_and_skip_headers():
    assert changed_lines(P1) == ["-    return sum(xs)", "+    result = sum(xs)", "+    return result"]


def test_removed_line_starting_with_double_dash_is_a_change_not_a_header():
    # SERA dropped both lines as if they were file headers.
    assert changed_lines(SQL_COMMENT) == ["--- old comment", "+++ new counter"]


def test_whitespace_only_changes_are_ignored():
    patch = "@@ -1,2 +1,2 @@\n-   \n+\t\n a\n"
    assert changed_lines(patch) == []


def test_no_newline_marker_is_not_a_change():
    patch = "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+b\n"
    assert changed_lines(patch) == ["-a", "+b"]


def test_full_recall_even_with_extra_lines_and_other_file_names():
    extra = P1 + "@@ -10,1 +11,2 @@\n x\n+print('debug')\n"
    assert line_recall(P1, extra) == 1.0
    assert line_recall(P1, SAME_LINES_OTHER_FILE) == 1.0


def test_partial_recall_is_multiset_matched():
    assert line_recall(P1, PARTIAL) == pytest.approx(1 / 3)
    doubled = "@@ -1,2 +1,2 @@\n-a\n-a\n+b\n+b\n"
    once = "@@ -1,1 +1,1 @@\n-a\n+b\n"
    assert line_recall(doubled, once) == 0.5


def test_empty_target_has_no_recall_and_is_never_resolved():
    assert line_recall("", P1) is None
    assert not is_resolved("", P1, 0.0)


@pytest.mark.parametrize(("produced", "threshold", "resolved"), [
    (P1, 1.0, True), (PARTIAL, 1.0, False), (PARTIAL, 0.3, True), (PARTIAL, 0.5, False),
    ("", 0.0, False), (PARTIAL, 0.0, True),
])
def test_threshold_semantics(produced, threshold, resolved):
    assert is_resolved(P1, produced, threshold) is resolved


def test_threshold_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="threshold"):
        is_resolved(P1, P1, 1.5)


def test_verdict_record():
    v = verify("i1", P1, PARTIAL, 0.5)
    assert (v.recall, v.resolved, v.target_lines, v.produced_lines) == (pytest.approx(1 / 3), False, 3, 3)
    assert v.to_dict()["instance_id"] == "i1"
