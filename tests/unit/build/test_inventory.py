"""Function inventory: code-folder detection, AST inventory, test filter, blob cache, cache format, seeded sampling."""

import json
import logging
import subprocess
import textwrap
from pathlib import Path

import pytest

from sera_ops.build import inventory as inventory_module
from sera_ops.build.inventory import (
    INVENTORY_FORMAT_VERSION,
    InventoryError,
    detect_code_folders,
    inventory_from_json,
    inventory_to_json,
    is_test_path,
    list_functions,
    sample_instances,
)
from sera_ops.records import Instance, StartFunction


def write(root: Path, relative: str, text: str = "") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def names(functions: list[StartFunction]) -> list[str]:
    return [function.key for function in functions]


# --- code folders ----------------------------------------------------------------------------------------------------

def test_listed_folders_are_unioned_and_missing_ones_ignored(tmp_path):
    write(tmp_path, "core/__init__.py")
    write(tmp_path, "plugins/__init__.py")
    folders = detect_code_folders(tmp_path, "repo", ["core", "missing", "plugins/", "./core"])
    assert folders == ["core", "plugins"]


def test_listed_folders_none_existing_is_a_clear_error(tmp_path):
    with pytest.raises(InventoryError) as raised:
        detect_code_folders(tmp_path, "repo", ["lib", "src/lib"])
    message = str(raised.value)
    assert "lib, src/lib" in message
    assert "top_level_folder" in message


def test_listed_folder_outside_the_repository_is_refused(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(InventoryError, match="outside the repository"):
        detect_code_folders(tmp_path / "repo", "repo", ["../elsewhere"])


def test_auto_detects_repo_name_spellings(tmp_path):
    write(tmp_path, "my_lib/__init__.py")
    write(tmp_path, "other/__init__.py")
    assert detect_code_folders(tmp_path, "acme/My-Lib", []) == ["my_lib"]


def test_auto_detects_src_layout(tmp_path):
    write(tmp_path, "src/mylib/__init__.py")
    write(tmp_path, "tests/__init__.py")
    assert detect_code_folders(tmp_path, "mylib", None) == ["src/mylib"]


def test_auto_detects_packages_when_package_name_differs_from_repo_name(tmp_path):
    write(tmp_path, "yaml_tools/__init__.py")
    write(tmp_path, "src/extra/__init__.py")
    for not_code in ("tests", "docs", "examples", "benchmarks", ".hidden"):
        write(tmp_path, f"{not_code}/__init__.py")
    (tmp_path / "scripts").mkdir()  # no __init__.py: not a package
    assert detect_code_folders(tmp_path, "pyyaml-tools", None) == ["src/extra", "yaml_tools"]


def test_auto_detect_falls_back_to_src(tmp_path):
    write(tmp_path, "src/tool.py", "def main(): pass\n")
    assert detect_code_folders(tmp_path, "tool", None) == ["src"]


def test_auto_detect_failure_tells_the_user_what_to_set(tmp_path):
    write(tmp_path, "setup.py")
    write(tmp_path, "tests/__init__.py")
    with pytest.raises(InventoryError) as raised:
        detect_code_folders(tmp_path, "Widget-Kit", None)
    message = str(raised.value)
    assert "widget_kit" in message and "src/Widget-Kit" in message
    assert "set `top_level_folder`" in message


# --- inventory -------------------------------------------------------------------------------------------------------

def test_methods_nested_and_async_functions_with_lines(tmp_path):
    write(tmp_path, "pkg/io/parser.py", """\
        import functools


        def slugify(text):
            def clean(part):
                return part.strip()
            return clean(text)


        class Parser:
            @functools.cache
            def parse_header(self):
                return 1

            async def fetch(self):
                return 2

            class Inner:
                def method(self):
                    lambda: 3


        if True:
            async def conditional():
                pass
        """)
    functions = list_functions(tmp_path, ["pkg"])
    assert [(function.name, function.line, function.end_line) for function in functions] == [
        ("slugify", 4, 7),
        ("slugify.clean", 5, 6),
        ("Parser.parse_header", 12, 13),
        ("Parser.fetch", 15, 16),
        ("Parser.Inner.method", 19, 20),
        ("conditional", 24, 25),
    ]
    assert {function.file for function in functions} == {"pkg/io/parser.py"}
    assert functions[2].key == "pkg/io/parser.py::Parser.parse_header"


def test_same_basename_in_several_files_is_kept(tmp_path):
    """SERA's basename heuristic dropped these: both `utils.py` define `helper`."""
    write(tmp_path, "pkg/a/utils.py", "def helper(): pass\n")
    write(tmp_path, "pkg/b/utils.py", "def helper(): pass\n")
    assert names(list_functions(tmp_path, ["pkg"])) == ["pkg/a/utils.py::helper", "pkg/b/utils.py::helper"]


def test_redefinition_keeps_the_first_def(tmp_path):
    write(tmp_path, "pkg/m.py", """\
        class C:
            @property
            def value(self):
                return 1

            @value.setter
            def value(self, new):
                pass
        """)
    functions = list_functions(tmp_path, ["pkg"])
    assert [(function.name, function.line) for function in functions] == [("C.value", 3)]


def test_depth_filter_counts_components_below_the_folder(tmp_path):
    for relative in ("pkg/one.py", "pkg/a/two.py", "pkg/a/b/three.py", "pkg/a/b/c/four.py"):
        write(tmp_path, relative, f"def {Path(relative).stem}(): pass\n")
    depth = {function.name for function in list_functions(tmp_path, ["pkg"], max_depth=2)}
    assert depth == {"one", "two"}
    assert {function.name for function in list_functions(tmp_path, ["pkg"])} == {"one", "two", "three"}
    for keep_all in (None, 0):
        assert len(list_functions(tmp_path, ["pkg"], max_depth=keep_all)) == 4
    write(tmp_path, "src/lib/x/y/z.py", "def deep(): pass\n")
    assert names(list_functions(tmp_path, ["src/lib"], max_depth=3)) == ["src/lib/x/y/z.py::deep"]


@pytest.mark.parametrize(("path", "is_test"), [
    ("pkg/tests/helpers.py", True),
    ("pkg/sub/tests/__init__.py", True),
    ("pkg/test_parser.py", True),
    ("pkg/test/test_client.py", True),
    ("pkg/parser_test.py", True),
    ("pkg/conftest.py", True),
    ("pkg/contrib/admin/tests.py", True),
    ("pkg/testing.py", False),  # test support the package's users import (click.testing, werkzeug.test)
    ("pkg/test.py", False),
    ("pkg/testing/helpers.py", False),  # numpy.testing
    ("pkg/test/client.py", False),  # django.test
    ("pkg/management/commands/test.py", False),
    ("pkg/testing_utils.py", False),
    ("pkg/latests.py", False),
    ("pkg/contest/attest.py", False),
    ("pkg/protest_tools/x.py", False),
])
def test_test_paths_are_matched_by_component(path, is_test):
    assert is_test_path(path) is is_test


def test_test_files_are_skipped_but_test_support_modules_are_not(tmp_path):
    write(tmp_path, "pkg/tests/test_core.py", "def test_a(): pass\n")
    write(tmp_path, "pkg/tests/helpers.py", "def helper(): pass\n")
    write(tmp_path, "pkg/test_thing.py", "def test_b(): pass\n")
    write(tmp_path, "pkg/conftest.py", "def fixture(): pass\n")
    write(tmp_path, "pkg/app/tests.py", "def test_c(): pass\n")
    write(tmp_path, "pkg/test/__init__.py", "")
    write(tmp_path, "pkg/test/client.py", "class Client:\n    def get(self): pass\n")
    write(tmp_path, "pkg/test/test_client.py", "def test_get(): pass\n")
    write(tmp_path, "pkg/testing.py", "def assert_equal(a, b): pass\n")
    write(tmp_path, "pkg/testing_utils.py", "def make_fake(): pass\n")
    assert names(list_functions(tmp_path, ["pkg"])) == [
        "pkg/test/client.py::Client.get", "pkg/testing.py::assert_equal", "pkg/testing_utils.py::make_fake"]


def test_unparsable_files_are_logged_and_skipped(tmp_path, caplog):
    write(tmp_path, "pkg/bad.py", "def broken(:\n")
    (tmp_path / "pkg/latin.py").write_bytes(b"def f():\n    return '\xe9'\n")  # not UTF-8, no coding cookie
    write(tmp_path, "pkg/good.py", "def fine(): pass\n")
    write(tmp_path, "pkg/notes.txt", "def not_python(): pass\n")
    with caplog.at_level(logging.WARNING, logger="sera_ops.build.inventory"):
        functions = list_functions(tmp_path, ["pkg"])
    assert names(functions) == ["pkg/good.py::fine"]
    assert "pkg/bad.py" in caplog.text and "pkg/latin.py" in caplog.text


def test_overlapping_folders_do_not_duplicate(tmp_path):
    write(tmp_path, "pkg/sub/m.py", "def f(): pass\n")
    assert names(list_functions(tmp_path, ["pkg", "pkg/sub"])) == ["pkg/sub/m.py::f"]


def test_results_are_sorted_by_file_then_line(tmp_path):
    write(tmp_path, "b/z.py", "def late(): pass\n")
    write(tmp_path, "a/y.py", "def second(): pass\n\ndef third(): pass\n")
    write(tmp_path, "a/x.py", "def first(): pass\n")
    assert [function.name for function in list_functions(tmp_path, ["b", "a"])] == ["first", "second", "third", "late"]


def test_missing_folder_is_an_inventory_error(tmp_path):
    with pytest.raises(InventoryError, match="'nope' does not exist"):
        list_functions(tmp_path, ["nope"])


# --- blob cache ------------------------------------------------------------------------------------------------------

def git_snapshot(path: Path) -> Path:
    """A one-commit repository like `sources.repos.snapshot` makes."""
    identity = ["-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "commit.gpgsign=false"]
    for args in (["init", "--quiet"], ["add", "--all"], [*identity, "commit", "--quiet", "-m", "snapshot"]):
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)
    return path


@pytest.fixture
def parse_spy(monkeypatch) -> list[str]:
    """The files `list_functions` parses, in order."""
    parsed: list[str] = []
    real_parse = inventory_module._parse

    def spy(source: bytes, path: Path):
        parsed.append(path.name)
        return real_parse(source, path)

    monkeypatch.setattr(inventory_module, "_parse", spy)
    return parsed


def two_commits(tmp_path: Path) -> tuple[Path, Path]:
    """Two snapshots of a package: the second changes `b.py` only."""
    first, second = tmp_path / "first", tmp_path / "second"
    for root, body in ((first, "return 1"), (second, "return 2\n\ndef added(): pass")):
        write(root, "pkg/a.py", "def a(): pass\n")
        write(root, "pkg/b.py", f"def b():\n    {body}\n")
        write(root, "pkg/c.py", "class C:\n    def c(self): pass\n")
        git_snapshot(root)
    return first, second


def test_blob_cache_reparses_only_changed_files(tmp_path, parse_spy):
    first, second = two_commits(tmp_path)
    cache = tmp_path / "cache" / "blobs.json"
    before = list_functions(first, ["pkg"], blob_cache=cache)
    assert sorted(parse_spy) == ["a.py", "b.py", "c.py"] and cache.exists()

    parse_spy.clear()
    after = list_functions(second, ["pkg"], blob_cache=cache)
    assert parse_spy == ["b.py"]
    assert after == list_functions(second, ["pkg"])  # the same answer as without a cache
    assert names(after) == ["pkg/a.py::a", "pkg/b.py::b", "pkg/b.py::added", "pkg/c.py::C.c"]
    assert names(before) == ["pkg/a.py::a", "pkg/b.py::b", "pkg/c.py::C.c"]

    parse_spy.clear()
    assert list_functions(first, ["pkg"], blob_cache=cache) == before  # both commits' blobs are kept
    assert parse_spy == []


def test_concurrent_writers_merge_their_blobs(tmp_path, monkeypatch):
    """Another commit's task writes the cache while this one parses: neither's blobs are lost."""
    first, second = two_commits(tmp_path)
    cache = tmp_path / "blobs.json"
    real_parse = inventory_module._parse

    def racing_parse(source: bytes, path: Path):
        if not cache.exists():
            monkeypatch.setattr(inventory_module, "_parse", real_parse)
            list_functions(first, ["pkg"], blob_cache=cache)
        return real_parse(source, path)

    monkeypatch.setattr(inventory_module, "_parse", racing_parse)
    list_functions(second, ["pkg"], blob_cache=cache)
    blobs = json.loads(cache.read_text())["blobs"]
    assert len(blobs) == 4  # a.py and c.py are shared, b.py differs
    assert sorted(name for definitions in blobs.values() for name, _, _ in definitions) == ["C.c", "a", "added", "b",
                                                                                            "b"]


def test_blob_cache_ignores_edited_and_untracked_files(tmp_path, parse_spy):
    first, _ = two_commits(tmp_path)
    cache = tmp_path / "blobs.json"
    list_functions(first, ["pkg"], blob_cache=cache)
    write(first, "pkg/a.py", "def edited(): pass\n")  # differs from the index: its blob id says nothing
    write(first, "pkg/new.py", "def untracked(): pass\n")
    parse_spy.clear()
    found = list_functions(first, ["pkg"], blob_cache=cache)
    assert sorted(parse_spy) == ["a.py", "new.py"]
    assert "pkg/a.py::edited" in names(found) and "pkg/new.py::untracked" in names(found)


def test_blob_cache_is_optional_and_format_checked(tmp_path, parse_spy):
    write(tmp_path, "plain/pkg/m.py", "def f(): pass\n")
    cache = tmp_path / "blobs.json"
    assert names(list_functions(tmp_path / "plain", ["pkg"], blob_cache=cache)) == ["pkg/m.py::f"]
    assert not cache.exists()  # not a git work tree: nothing to key the cache by

    snapshot = git_snapshot(tmp_path / "plain")
    cache.write_text(json.dumps({"version": INVENTORY_FORMAT_VERSION - 1, "python": "0.0", "blobs": {}}))
    parse_spy.clear()
    assert names(list_functions(snapshot, ["pkg"], blob_cache=cache)) == ["pkg/m.py::f"]
    assert parse_spy == ["m.py"]
    assert json.loads(cache.read_text())["version"] == INVENTORY_FORMAT_VERSION  # replaced, not misread

    cache.write_text("{not json")
    assert names(list_functions(snapshot, ["pkg"], blob_cache=cache)) == ["pkg/m.py::f"]


def test_unparsable_files_are_cached_as_such(tmp_path, parse_spy, caplog):
    write(tmp_path, "pkg/bad.py", "def broken(:\n")
    write(tmp_path, "pkg/good.py", "def fine(): pass\n")
    git_snapshot(tmp_path)
    cache = tmp_path.parent / f"{tmp_path.name}-blobs.json"
    assert names(list_functions(tmp_path, ["pkg"], blob_cache=cache)) == ["pkg/good.py::fine"]
    parse_spy.clear()
    with caplog.at_level(logging.WARNING, logger="sera_ops.build.inventory"):
        assert names(list_functions(tmp_path, ["pkg"], blob_cache=cache)) == ["pkg/good.py::fine"]
    assert parse_spy == [] and "pkg/bad.py" in caplog.text


# --- cache format ----------------------------------------------------------------------------------------------------

def test_inventory_json_round_trip(tmp_path):
    write(tmp_path, "pkg/m.py", "def a():\n    b()\n\ndef b(): pass\n")
    functions = list_functions(tmp_path, ["pkg"])
    document = json.loads(json.dumps(inventory_to_json(functions)))
    assert set(document) == {"version", "functions"}
    assert inventory_from_json(document) == functions


def test_inventory_json_rejects_other_versions_and_shapes():
    with pytest.raises(InventoryError, match="version 1, expected 2"):  # version 1 carried call edges
        inventory_from_json({"version": 1, "functions": [], "edges": {}})
    with pytest.raises(InventoryError, match="malformed"):
        inventory_from_json({"version": INVENTORY_FORMAT_VERSION, "functions": [{"name": "f"}]})


def test_records_round_trip_through_dicts():
    function = StartFunction("Parser.parse_header", "mylib/io/parser.py", 10, 20)
    assert StartFunction.from_dict(json.loads(json.dumps(function.to_dict()))) == function
    instance = Instance("mylib_abcdef1_10000", "mylib", "abcdef1234", "slugify", "mylib/text.py", 0)
    assert Instance.from_dict(json.loads(json.dumps(instance.to_dict()))) == instance


# --- sampling --------------------------------------------------------------------------------------------------------

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def inventory(prefix: str, count: int) -> list[StartFunction]:
    return [StartFunction(f"{prefix}{index}", f"pkg/{prefix}.py", index + 1, index + 1) for index in range(count)]


def test_sampling_is_deterministic_per_seed():
    by_commit = {COMMIT_A: inventory("f", 30), COMMIT_B: inventory("g", 30)}
    first = sample_instances("mylib", by_commit, fns_per_repo=20, insts_per_fn=1, seed=7)
    assert first == sample_instances("mylib", by_commit, fns_per_repo=20, insts_per_fn=1, seed=7)
    reversed_input = {commit: list(reversed(functions)) for commit, functions in by_commit.items()}
    assert first == sample_instances("mylib", reversed_input, fns_per_repo=20, insts_per_fn=1, seed=7)
    other_seed = sample_instances("mylib", by_commit, fns_per_repo=20, insts_per_fn=1, seed=8)
    assert [instance.start_fn for instance in first] != [instance.start_fn for instance in other_seed]


def test_fns_per_repo_limits_the_whole_repository_round_robin():
    by_commit = {COMMIT_A: inventory("f", 5), COMMIT_B: inventory("g", 2)}
    instances = sample_instances("mylib", by_commit, fns_per_repo=6, insts_per_fn=1, seed=0)
    assert len(instances) == 6
    assert [instance.commit for instance in instances] == [COMMIT_A, COMMIT_B, COMMIT_A, COMMIT_B, COMMIT_A, COMMIT_A]
    assert [instance.instance_id for instance in instances] == [
        "mylib_aaaaaaa_10000", "mylib_bbbbbbb_10000", "mylib_aaaaaaa_10001",
        "mylib_bbbbbbb_10001", "mylib_aaaaaaa_10002", "mylib_aaaaaaa_10003",
    ]
    assert {instance.start_fn for instance in instances if instance.commit == COMMIT_B} == {"g0", "g1"}
    everything = sample_instances("mylib", by_commit, fns_per_repo=100, insts_per_fn=1, seed=0)
    assert len(everything) == 7


def test_insts_per_fn_makes_numbered_copies():
    instances = sample_instances("mylib", {COMMIT_A: inventory("f", 3)}, fns_per_repo=2, insts_per_fn=3, seed=1)
    assert [instance.instance_id for instance in instances] == [
        "mylib_aaaaaaa_10000-0", "mylib_aaaaaaa_10000-1", "mylib_aaaaaaa_10000-2",
        "mylib_aaaaaaa_10001-0", "mylib_aaaaaaa_10001-1", "mylib_aaaaaaa_10001-2",
    ]
    assert [instance.copy_index for instance in instances] == [0, 1, 2, 0, 1, 2]
    first_function = {(instance.start_fn, instance.start_fn_file) for instance in instances[:3]}
    assert len(first_function) == 1 and instances[0].start_fn_file == "pkg/f.py"
    assert instances[0].start_fn != instances[3].start_fn
    assert all(instance.repo == "mylib" and instance.commit == COMMIT_A for instance in instances)


@pytest.mark.parametrize(("fns_per_repo", "insts_per_fn", "argument"), [
    (0, 1, "fns_per_repo"), (5, 0, "insts_per_fn"), (True, 1, "fns_per_repo"), (5, 1.5, "insts_per_fn"),
])
def test_sampling_validates_arguments(fns_per_repo, insts_per_fn, argument):
    with pytest.raises(ValueError, match=argument):
        sample_instances("mylib", {COMMIT_A: inventory("f", 3)}, fns_per_repo, insts_per_fn, seed=0)


def test_sampling_with_no_functions_is_empty():
    assert sample_instances("mylib", {COMMIT_A: [], COMMIT_B: []}, fns_per_repo=5, insts_per_fn=1, seed=0) == []
