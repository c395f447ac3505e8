"""Hostile and careless input on the spec path: every case ends in valid output or in one error
line with a non-zero exit, no traceback and nothing written. A property-based fuzz test covers
what the explicit cases below do not think of."""

from __future__ import annotations

import copy
import json
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from launcher.cli import app
from tests.conftest import BASE_SPEC

LOCAL = {**copy.deepcopy(BASE_SPEC), "runDir": "/runs",
         "model": {"checkpoint": "/ckpt/ckpt-0"}, "data": {"train": ["/data/train-*"]}}


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _refused(result: Result, *expected: str, code: int = 2) -> str:
    """One error line, the given exit code, no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"traceback: {result.exception!r}"
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    for text in expected:
        assert text in lines[0], lines[0]
    assert "\x1b" not in lines[0] and "\r" not in lines[0]
    return lines[0]


def _spec_file(tmp_path: Path, data: bytes | str) -> Path:
    path = tmp_path / "job.yaml"
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def _objects(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def _env(objects: list[dict[str, Any]]) -> dict[str, str]:
    job = next(o for o in objects if o["kind"] == "Job")
    return {e["name"]: e.get("value") for e in
            job["spec"]["template"]["spec"]["containers"][0]["env"]}


# --- encodings and characters -------------------------------------------------------------------

def test_a_spec_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, yaml.safe_dump(LOCAL).encode() + b"name: caf\xe9\n")
    _refused(_run("validate", str(path)), "is not UTF-8 text (byte 0xe9 at offset")


def test_a_utf16_spec_with_a_bom_is_read(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, yaml.safe_dump(LOCAL).encode("utf-16"))
    assert _run("render", str(path)).exit_code == 0


@pytest.mark.parametrize("value", ["😀", "a\U0010fffdb", "日本語 ✓", "x\u00a0y"])
def test_characters_beyond_the_bmp_render_and_round_trip(tmp_path: Path, value: str) -> None:
    path = _spec_file(tmp_path, yaml.safe_dump(LOCAL))
    result = _run("render", str(path), "--set", f"env.FOO={value}", "--set",
                  f"args=[{json.dumps(value, ensure_ascii=False)}]")
    objects = _objects(result)
    assert _env(objects)["FOO"] == value
    job = next(o for o in objects if o["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [value]


def test_control_characters_in_keys_are_escaped_in_the_error(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, yaml.safe_dump({**LOCAL, "na\x1b]0;pwned\x07me\nx": 1}))
    line = _refused(_run("validate", str(path)), "unknown field")
    assert "\\x1b" in line and "\x07" not in line
    _refused(_run("validate", str(path), "--set", "a\x1b[2Jb.c=1"), "\\x1b")


# --- size and depth -----------------------------------------------------------------------------

def test_deep_nesting_in_the_file_and_in_set(tmp_path: Path) -> None:
    deep = "[" * 3000 + "]" * 3000
    path = _spec_file(tmp_path, yaml.safe_dump(LOCAL) + f"env: {deep}\n")
    _refused(_run("validate", str(path)), "not valid YAML")
    path = _spec_file(tmp_path, yaml.safe_dump(LOCAL) + "env: " + "[" * 60 + "]" * 60 + "\n")
    _refused(_run("validate", str(path)), "nested more than 50 levels")
    path = _spec_file(tmp_path, yaml.safe_dump(LOCAL))
    _refused(_run("validate", str(path), "--set", "env.X=" + "[" * 60 + "]" * 60),
             "--set env.X is nested more than 50 levels")
    _refused(_run("validate", str(path), "--set", "a." * 3000 + "b=1"), "deeper than any")
    # Too deep for YAML at all: the value is taken as the plain string it is.
    assert _env(_objects(_run("render", str(path), "--set", f"env.X={deep}")))["X"] == deep


def test_an_alias_bomb_is_refused_before_anything_expands_it(tmp_path: Path) -> None:
    bomb = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
    text = "l0: &l0 [x, x, x, x, x, x, x, x, x]\n" + bomb + "profile: *l9\n"
    path = _spec_file(tmp_path, yaml.safe_dump(LOCAL) + text)
    line = _refused(_run("validate", str(path)), "holds more than 100,000 values (YAML aliases")
    assert len(line) < 200


def test_error_lines_are_bounded(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, yaml.safe_dump({**LOCAL, "profile": ["x" * 1000] * 200}))
    line = _refused(_run("validate", str(path)), "profile: ")
    assert len(line) < 300
    for enum in ("profile", "imagePullPolicy"):  # msgspec echoes the whole value
        path = _spec_file(tmp_path, yaml.safe_dump({**LOCAL, enum: "y" * 5000}))
        line = _refused(_run("validate", str(path)), f"{enum}: ")
        assert len(line) < 300, line


def test_a_spec_over_its_size_limit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, yaml.safe_dump(LOCAL) + "env:\n" + "".join(
        f"  V{i}: {'v' * 100}\n" for i in range(5000)))
    line = _refused(_run("validate", str(path)), "bytes; a spec holds at most 256 KiB")
    assert len(line) < 200
    spec_file = _spec_file(tmp_path, yaml.safe_dump(LOCAL))
    _refused(_run("validate", str(spec_file), "--set", "env.V=" + "v" * 300_000),
             "--set env.V is 300,000 bytes")


def test_what_the_api_server_or_a_process_would_refuse_is_refused_here() -> None:
    """An env value with a NUL (no process environment holds one) and a Job over the API
    server's 1.5 MiB object limit fail at submit; they are refused before."""
    from launcher.api import build_objects
    from launcher.errors import ManifestError, SpecError
    from launcher.spec import build_spec

    with pytest.raises(SpecError, match=r"^env: value of 'X' contains a NUL character$"):
        build_spec({**copy.deepcopy(LOCAL), "env": {"X": "a\x00b"}})
    big = build_spec({**copy.deepcopy(LOCAL), "env": {f"V{i}": "v" * 250_000 for i in range(7)}})
    with pytest.raises(ManifestError, match=r"^Job/det: is 1,7\d\d,\d{3} bytes; the API server "
                                            "stores at most 1.5 MiB per object"):
        build_objects(big, schema=False)


@pytest.mark.parametrize("value", ["!!int x", "!!float x", "!!bool x", "!!timestamp x",
                                   '!!int ""'])
def test_a_value_its_yaml_tag_does_not_fit_is_one_line(tmp_path: Path, value: str) -> None:
    path = _spec_file(tmp_path, yaml.safe_dump(LOCAL) + f"namespace: {value}\n")
    _refused(_run("validate", str(path)), "is not a valid !!")
    spec_file = _spec_file(tmp_path, yaml.safe_dump(LOCAL))
    _refused(_run("validate", str(spec_file), "--set", f"workers={value}"), "is not a valid !!")


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, yaml.safe_dump(LOCAL) + "workers: 2\nworkers: 4\n")
    _refused(_run("validate", str(path)), "duplicate key 'workers'")


# --- values the API server would reject ---------------------------------------------------------

@pytest.mark.parametrize(("setting", "field"), [
    ("scheduling.ttlSecondsAfterFinished=2147483648", "scheduling.ttlSecondsAfterFinished"),
    ("scheduling.activeDeadlineSeconds=9223372036854775808",
     "scheduling.activeDeadlineSeconds"),
    ("scheduling.terminationGracePeriodSeconds=9223372036854775808",
     "scheduling.terminationGracePeriodSeconds"),
    ("training.steps=2147483648", "training.steps"),
    ("training.learningRate=.inf", "training.learningRate"),
    ("training.learningRate=.nan", "training.learningRate"),
    ("resources.accelerator=nvidia l4!", "resources.accelerator"),
    ('scheduling.tolerations=[{key: "bad key!", operator: Exists}]',
     "scheduling.tolerations[0]"),
    ("scheduling.tolerations=[{key: a, operator: Exists, value: b}]",
     "scheduling.tolerations[0]: operator Exists takes no value"),
    ("scheduling.tolerations=[{key: a, value: b, effect: NoSchedule, tolerationSeconds: 5}]",
     "scheduling.tolerations[0]: tolerationSeconds needs effect NoExecute"),
    (f"scheduling.nodeSelector={{{'a' * 64}.example.com/x: y}}", "scheduling.nodeSelector"),
    ("env.HOME=/root", "env: 'HOME' is set by the launcher"),
    ("runDir=/runs/$(JOB_COMPLETION_INDEX)", "runDir: "),
    ("data.train=[gs://b/$(HOME)/x-*]", "data.train[0]"),
])
def test_values_the_api_server_would_reject_are_refused_here(tmp_path: Path, setting: str,
                                                             field: str) -> None:
    path = _spec_file(tmp_path, yaml.safe_dump(LOCAL))
    extra = ["--gpus", "1"] if setting.startswith("resources.accelerator") else []
    _refused(_run("validate", str(path), "--set", setting, *extra), f"error: {field}")


def test_credentials_env_clashes_only_with_a_key_secret(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, yaml.safe_dump(LOCAL))
    setting = "env.GOOGLE_APPLICATION_CREDENTIALS=/k.json"
    assert _run("render", str(path), "--set", setting).exit_code == 0
    _refused(_run("render", str(path), "--set", setting, "--key-secret", "gcs"),
             "'GOOGLE_APPLICATION_CREDENTIALS' is set by the launcher")


# --- files written ------------------------------------------------------------------------------

def test_output_files_are_written_all_or_not_at_all(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, yaml.safe_dump(LOCAL))
    _refused(_run("spec", "init", str(tmp_path / "no" / "such" / "x.yaml")), "cannot write")
    blocker = tmp_path / "a-file"
    blocker.write_text("keep")
    _refused(_run("render", str(path), "--output-dir", str(blocker)), "cannot write")
    assert blocker.read_text() == "keep"
    out = tmp_path / "out"
    (out / "02-job-det.yaml").mkdir(parents=True)
    _refused(_run("render", str(path), "--output-dir", str(out)), "no file was written")
    assert [p.name for p in out.iterdir()] == ["02-job-det.yaml"]
    fresh = tmp_path / "fresh" / "dir"
    assert _run("render", str(path), "--output-dir", str(fresh)).exit_code == 0
    assert sorted(p.name for p in fresh.iterdir()) == [
        "00-service-det.yaml", "01-networkpolicy-det.yaml", "02-job-det.yaml"]


# --- the fuzz test ------------------------------------------------------------------------------

FIELDS = ["name", "namespace", "profile", "image", "imagePullPolicy", "workers", "port", "runDir",
          "resources.gpus", "resources.accelerator", "resources.cpu", "resources.memory",
          "resources.shmSize", "model.checkpoint", "model.fineTuneType", "model.labelMap",
          "model.numClasses", "model.imageSize", "data.train", "data.eval", "training.steps",
          "training.globalBatchSize", "training.checkpointEvery", "training.learningRate",
          "training.warmupSteps", "scheduling.nodeSelector", "scheduling.tolerations",
          "scheduling.queue", "scheduling.priorityClass", "scheduling.retriesPerIndex",
          "scheduling.ttlSecondsAfterFinished", "scheduling.activeDeadlineSeconds",
          "auth.keySecret", "auth.gcpServiceAccount", "env", "command", "args", "nope.x"]

_special = st.sampled_from(["\x1b[31m", "\n", "$(X)", "$$", "😀", "\u202e", ": ", "- ", "{",
                           "'", '"', "*a", "&a", "\udc80", "\x85", "\x00", "!!int x",
                           "!!float x", "!!bool x", "!!timestamp x", '!!int ""'])
_text = (st.text(alphabet=st.characters(codec="utf-8"), max_size=20) | _special
         | st.builds(lambda a, b: a + b, _special, st.text(max_size=5)))
_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | _text
            | st.sampled_from(["gke", "kind", "generic", "gs://b/x", "/p", "4", "16Gi", "a-b"]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(_text, inner, max_size=3), max_leaves=8)
_changes = st.lists(st.tuples(st.sampled_from(FIELDS) | _text, _values), max_size=4)
_sets = st.lists(st.tuples(st.sampled_from(FIELDS) | _text, _text), max_size=3)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(changes=_changes, sets=_sets,
       form=st.sampled_from(["yaml", "utf16", "latin1", "garbage"]))
@example(changes=[("env", {"FOO": "😀"})], sets=[], form="yaml")
@example(changes=[], sets=[("env.FOO", "😀")], form="yaml")
@example(changes=[("profile", [["x" * 50] * 50] * 50)], sets=[], form="yaml")
@example(changes=[("env", {"X": "a\x00b"})], sets=[], form="yaml")
@example(changes=[], sets=[("workers", "!!int x"), ("name", "!!timestamp x")], form="yaml")
@example(changes=[("imagePullPolicy", "y" * 5000)], sets=[], form="yaml")
@example(changes=[], sets=[(f"env.V{i}", "v" * 250_000) for i in range(7)], form="yaml")
def test_fuzz_spec_path_ends_in_output_or_one_error_line(
        tmp_path: Path, changes: list[tuple[str, Any]], sets: list[tuple[str, str]],
        form: str) -> None:
    raw: dict[str, Any] = copy.deepcopy(LOCAL)
    for dotted, value in changes:
        node = raw
        keys = dotted.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else {}
        node[keys[-1]] = value
    text = yaml.safe_dump(raw, allow_unicode=True)
    data = {"yaml": text.encode("utf-8", "surrogatepass"),
            "utf16": text.encode("utf-16", "surrogatepass"),
            "latin1": text.encode("utf-8", "surrogatepass").replace(b"\xc3", b"\xe3"),
            "garbage": bytes(range(256)) + text.encode()[:50]}[form]
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    spec = case / "job.yaml"
    spec.write_bytes(data)
    out = case / "out"
    args = ["render", str(spec), "--output-dir", str(out)]
    for key, value in sets:
        args += ["--set", f"{key}={value}"]
    result = _run(*args)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"traceback: {result.exception!r}"
    if result.exit_code == 0:
        written = sorted(out.iterdir())
        assert len(written) in (2, 3, 4)
        for path in written:
            assert len(list(yaml.safe_load_all(path.read_text()))) == 1
        return
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(c.isprintable() for c in lines[0]) and len(lines[0]) <= 400, lines[0]
    assert not out.exists(), "files were written although the spec was refused"
    assert set(string.whitespace) & set(lines[0]) <= {" "}
