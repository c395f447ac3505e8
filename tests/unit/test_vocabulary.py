"""One vocabulary: every training field once (``trainer.fields``), every family once
(``trainer.detection.families``), and nothing in the repository that names a field, a file or a
module that does not exist."""

from __future__ import annotations

import ast
import copy
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from typer.testing import CliRunner

from launcher import demo as demo_module
from launcher.cli import app
from launcher.errors import SpecError
from launcher.reference import example_spec_text, with_fields_table
from launcher.render import trainer_args
from launcher.spec import JobSpec, build_spec
from tests.conftest import BASE_SPEC
from trainer import rules
from trainer.config import DEFAULTS, ConfigError, TrainConfig, from_args, parser
from trainer.detection import families
from trainer.detection.families.base import Family
from trainer.fields import BY_NAME, FIELDS, Field, to_args

ROOT = Path(__file__).resolve().parents[2]


def _other_value(f: Field) -> Any:
    """A valid value of the field other than its default."""
    if f.example is not None and f.example != f.default:
        return f.example
    options = f.options()
    if options:
        return next(o for o in reversed(options) if o != f.default)
    if f.type is bool:
        return not f.default
    if f.type is int:
        return f.default * 2 if f.default else int(max(f.minimum or 0, 7))
    if f.type is float:
        return (f.minimum or 0) + 0.25 if f.maximum == 1 else 0.125
    return ["-a/x-*", "b"] if f.repeated else f"-{f.name}/value"


PIPELINE = "train_config { batch_size: 4 }"


def test_to_args_is_the_inverse_of_from_args_for_every_field() -> None:
    """Each field alone at a value other than its default: rendered, read back, equal (paths
    that start with '-' included)."""
    base = {"run_dir": "-r", "train": ["-t"], "checkpoint": "-c"}
    for f in FIELDS:
        task = f.task or "detection"
        values = {**base, "task": task, f.name: _other_value(f)}
        if f.name == "task":
            values["task"] = "keras"
        cfg = from_args(to_args(values), {}, {values.get("pipeline_config"): PIPELINE}.get)
        assert getattr(cfg, f.name) == values[f.name], f.name
        assert cfg.sources[f.name] == "flag", f.name
    defaults = from_args(to_args(base), {})
    assert all(getattr(defaults, name) == value for name, value in DEFAULTS.items()
               if name not in base)


def test_every_field_is_a_trainer_flag_a_config_attribute_and_a_spec_path() -> None:
    flags = {a.dest: a for a in parser()._actions if a.dest != "help"}
    assert set(flags) == {f.name for f in FIELDS}
    attributes = set(TrainConfig.__dataclass_fields__)
    assert {f.name for f in FIELDS} <= attributes
    paths = _spec_paths(JobSpec)
    assert {f.spec for f in FIELDS if f.spec} <= paths
    for f in FIELDS:
        assert flags[f.name].option_strings == [f.flag] or f.type is bool


def test_docs_field_table_is_current() -> None:
    doc = (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")
    assert with_fields_table(doc) == doc, "run: python -m launcher.reference"


def test_the_example_spec_sets_what_it_shows() -> None:
    spec = build_spec(_yaml(example_spec_text()))
    assert spec.training.steps == BY_NAME["steps"].example
    assert spec.model.checkpoint == BY_NAME["checkpoint"].example


def _yaml(text: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(text)


def test_a_rule_runs_alike_in_the_spec_and_in_the_trainer() -> None:
    raw = copy.deepcopy(BASE_SPEC)
    raw["model"]["imageSize"] = 300
    with pytest.raises(SpecError) as spec_err:
        build_spec(raw)
    assert spec_err.value.field == "model.imageSize"
    with pytest.raises(ConfigError) as trainer_err:
        from_args(["--run-dir=/r", "--train=/t", "--image-size=300"], {})
    assert spec_err.value.message in str(trainer_err.value)
    assert str(trainer_err.value).startswith("--image-size (model.imageSize): ")


def test_a_bad_argument_is_one_line_not_a_usage_page(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"^command line: argument --steps: invalid int value"):
        from_args(["--run-dir=/r", "--train=/t", "--steps=many"], {})
    assert capsys.readouterr().err == ""


class Throwaway(Family):
    """A family only this test knows."""

    name = "throwaway"
    help = "a test's own family"
    checkpoint_markers: ClassVar[tuple[str, ...]] = ("throwaway_head/",)
    backbones: ClassVar[tuple[str, ...]] = ()
    own_backbone = "its own"


def test_a_registered_family_appears_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = copy.deepcopy(BASE_SPEC)
    raw["model"]["family"] = "throwaway"
    with pytest.raises(SpecError, match="invalid enum value 'throwaway'"):
        build_spec(raw)
    seen: list[str] = []
    monkeypatch.setattr(demo_module, "run_demo",
                        lambda _dir, settings, _stage: seen.append(settings.family) or 1 / 0)
    with families.registered(Throwaway()):
        spec = build_spec(raw)
        assert "--family=throwaway" in trainer_args(spec)
        assert from_args(trainer_args(spec), {}).family == "throwaway"
        assert "throwaway" in parser().format_help()
        assert families.of_checkpoint({"throwaway_head/kernel/.ATTRIBUTES/VARIABLE_VALUE",
                                       "backbone/x"}) == "throwaway"
        raw["model"]["backbone"] = "resnet50"
        with pytest.raises(SpecError, match="throwaway's backbone is its own"):
            build_spec(raw)
        CliRunner().invoke(app, ["demo", "--family", "throwaway", "--dir", "/nonexistent/x"])
    assert seen == ["throwaway"]
    result = CliRunner().invoke(app, ["demo", "--family", "throwaway"])
    assert result.exit_code == 2 and "not one of retinanet" in result.stderr


def test_rules_name_fields_each_side_its_way() -> None:
    class Names:
        def field(self, name: str) -> str:
            return f"<{name}>"

        def setting(self, name: str, value: Any) -> str:
            return f"<{name}={value}>"

    with pytest.raises(rules.RuleError) as err:
        rules.check({"task": "keras", "checkpoint": None}, set(), Names())
    assert (err.value.field, err.value.message) == (
        "checkpoint", "required with <task=keras> (the exported model: .h5, .keras or a "
        "SavedModel directory)")


def test_the_trainer_imports_nothing_of_the_launcher() -> None:
    for path in (ROOT / "trainer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "launcher" for n in names), path


def test_the_trainer_help_runs_without_the_launcher() -> None:
    code = ("import sys; sys.modules['launcher'] = None\n"
            "from trainer.__main__ import main\nmain(['--help'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0 and "--family" in out.stdout, out.stderr[-2000:]


# --- nothing names what does not exist ---------------------------------------------------

SPEC_TOKEN = re.compile(r"\b(?:model|data|training|resources|scheduling|auth)"
                        r"(?:\.[a-z][A-Za-z0-9]*)+")
# A repository file: a path under a top-level folder with an extension, or a Dockerfile.
FILE_TOKEN = re.compile(r"\b(?:launcher|trainer|docs|images|manifests|tests|bench)/"
                        r"[\w./-]*(?:\.[a-z0-9]+|Dockerfile[\w.]*)\b")
MODULE_TOKEN = re.compile(r"(?<![\w./-])(?:trainer|launcher)(?:\.[a-z_][a-z0-9_]*)+")


def _spec_paths(struct: type, prefix: str = "") -> set[str]:
    found: set[str] = set()
    for f in msgspec.structs.fields(struct):
        path = f"{prefix}{f.encode_name}"
        found.add(path)
        for kind in _struct_types(f.type):
            found |= _spec_paths(kind, path + ".")
    return found


def _struct_types(annotation: Any) -> list[type]:
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return [annotation]
    return [t for arg in getattr(annotation, "__args__", ()) for t in _struct_types(arg)]


def _texts() -> list[tuple[Path, str]]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    return [(ROOT / name, (ROOT / name).read_text(encoding="utf-8")) for name in listed
            if name.endswith((".py", ".md", ".j2", ".yaml", ".toml")) and (ROOT / name).is_file()]


def _is_spec_like(token: str) -> bool:
    """A spec path has camelCase parts (Model Garden and code paths are snake_case)."""
    return any(c.isupper() for c in token)


def test_no_text_names_a_spec_field_a_file_or_a_module_that_does_not_exist() -> None:
    paths = _spec_paths(JobSpec)
    missing: list[str] = []
    for path, text in _texts():
        for token in SPEC_TOKEN.findall(text):
            if _is_spec_like(token) and token not in paths:
                missing.append(f"{path.relative_to(ROOT)}: spec field {token}")
        for token in FILE_TOKEN.findall(text):
            if "*" in token or "<" in token:
                continue
            if not (ROOT / token).exists() and not (ROOT / token.rstrip(".")).exists():
                missing.append(f"{path.relative_to(ROOT)}: file {token}")
        for token in MODULE_TOKEN.findall(text):
            if not _module_prefix_exists(token):
                missing.append(f"{path.relative_to(ROOT)}: module {token}")
    assert not missing, "\n".join(missing)


def _module_prefix_exists(dotted: str) -> bool:
    """The longest module of ``dotted`` exists, and the name after it (if any) is defined in
    that module's source (an attribute, a class, a function)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:end]))
        except ImportError:  # the part before is a module, not a package
            continue
        if spec is None or spec.origin is None:
            continue
        if end == len(parts):
            return True
        source = Path(spec.origin).read_text(encoding="utf-8")
        return re.search(rf"\b{re.escape(parts[end])}\b", source) is not None
    return False


def test_validate_reads_a_path_that_starts_with_a_dash(tmp_path: Path) -> None:
    """Such a path once rendered as a token of its own: the trainer's parser refused it in the
    pod, and `validate` printed argparse's usage page."""
    import yaml

    raw = copy.deepcopy(BASE_SPEC)
    raw["runDir"] = "-runs"
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["validate", str(spec_file)])
    assert "usage:" not in result.stderr and "invalid command-line" not in result.stderr
    assert "--run-dir" not in result.stderr, result.stderr


@pytest.mark.parametrize(("family", "size", "image", "fits"), [
    ("retinanet", "standard", 320, 384), ("retinanet", "tiny", 80, 96),
    ("faster_rcnn", "standard", 96, 128), ("yolo", "standard", 100, 96)])
def test_each_family_refuses_sizes_its_levels_do_not_divide(family: str, size: str, image: int,
                                                            fits: int) -> None:
    raw = copy.deepcopy(BASE_SPEC)
    raw["model"].update(family=family, size=size, imageSize=image)
    with pytest.raises(SpecError, match=rf"is not a multiple of .*: try {fits}$") as err:
        build_spec(raw)
    assert err.value.field == "model.imageSize"
    raw["model"]["imageSize"] = fits
    assert build_spec(raw).model.image_size == fits


def test_tensorflow_errors_lose_their_internals_in_a_message() -> None:
    from trainer.text import tf_message

    class OpError(Exception):
        message = ("{{function_node __wrapped__IteratorGetNext_output_types_1_device_/job:"
                   "localhost/replica:0/task:0/device:CPU:0}} corrupted record at 1234 "
                   "[Op:IteratorGetNext] name: ")

    assert tf_message(OpError()) == "corrupted record at 1234"
    assert tf_message(OpError(), limit=20) == "corrupted record at ..."
