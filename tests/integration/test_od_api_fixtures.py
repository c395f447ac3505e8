"""The SSD family computes what the real OD API computes: ../shared/odapi holds, per zoo config,
a seeded zoo-layout checkpoint writer and the OD API's own outputs (TF 2.15) on fixed inputs.
Each test writes that checkpoint, builds our model from the same pipeline.config, restores it
by the zoo's keys (every one used, none missing), and compares.

Tolerances: every output within 1e-4 of its largest magnitude (in practice: ResNets bit-exact,
MobileNets <= 4e-5 of it: oneDNN's depthwise kernels sum in another order); every loss term
within 1e-5 relative. ``ODAPI_FIXTURES`` overrides where the fixtures are."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("ODAPI_FIXTURES", ROOT.parent / "shared" / "odapi"))
OUTPUT_TOLERANCE = 1e-4  # of the array's max |x|
LOSS_TOLERANCE = 1e-5  # relative


def _fixtures() -> list[str]:
    if not (FIXTURES / "fixtures").is_dir():
        return []
    return sorted(p.name for p in (FIXTURES / "fixtures").iterdir() if (p / "meta.json").exists())


def _ssd_fixtures() -> list[str]:
    from trainer.detection.families.ssd.spec import EXTRACTORS

    return [name for name in _fixtures() if any(
        f'"{t}"' in (FIXTURES / "fixtures" / name / "pipeline.config").read_text()
        for t in EXTRACTORS)]


pytestmark = pytest.mark.skipif(not _fixtures(), reason=f"no OD API fixtures at {FIXTURES}")


class Fixture:
    """One fixture folder, its checkpoint written, our model built and restored."""

    def __init__(self, name: str, scratch: Path):
        import tensorflow as tf

        from trainer.detection.families.ssd.model import SsdModel
        from trainer.detection.families.ssd.spec import read

        sys.path.insert(0, str(FIXTURES))
        import make_checkpoint

        self.dir = FIXTURES / "fixtures" / name
        self.meta = json.loads((self.dir / "meta.json").read_text())
        self.entries = make_checkpoint.load_entries(str(self.dir / "variables.json"))
        self.prefix, digest = make_checkpoint.write_checkpoint(
            self.entries, self.meta["seed"], str(scratch / "zoo"))
        assert digest == self.meta["checkpoint"]["values_sha256"]
        self.inputs = np.load(self.dir / "inputs.npz")
        self.ref = np.load(self.dir / "od_outputs.npz")
        self.model = SsdModel(read((self.dir / "pipeline.config").read_text()))
        self.images = tf.concat([self.model.preprocess(self.inputs[f"image_{i}"][None])
                                 for i in (0, 1)], 0)
        self.model(self.images, training=False)
        self.status = tf.train.Checkpoint(model=self.model).read(self.prefix)

    def ground_truth(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes, 0-based classes and a validity mask, padded to one length."""
        counts = [len(self.inputs[f"boxes_{i}"]) for i in (0, 1)]
        n = max(counts)
        boxes = np.zeros((2, n, 4), np.float32)
        classes = np.zeros((2, n), np.int32)
        valid = np.zeros((2, n), bool)
        for i, count in enumerate(counts):
            boxes[i, :count] = self.inputs[f"boxes_{i}"]
            classes[i, :count] = self.inputs[f"classes_{i}"] - 1
            valid[i, :count] = True
        return boxes, classes, valid


@pytest.fixture(scope="module", params=_ssd_fixtures())
def fixture(request: Any, tmp_path_factory: Any) -> Fixture:
    return Fixture(request.param, tmp_path_factory.mktemp(request.param))


def _close(ours: Any, theirs: np.ndarray, what: str) -> None:
    ours = np.asarray(ours)[:theirs.shape[0]].reshape(theirs.shape)
    scale = max(float(np.abs(theirs).max()), 1e-6)
    worst = float(np.abs(ours - theirs).max())
    assert worst <= OUTPUT_TOLERANCE * scale, f"{what}: max |diff| {worst:.3g} of scale {scale:.3g}"


def test_zoo_checkpoint_restores_every_key_and_only_those(fixture: Fixture,
                                                          tmp_path: Path) -> None:
    import tensorflow as tf

    fixture.status.assert_consumed()
    written = tf.train.Checkpoint(model=fixture.model).write(str(tmp_path / "ours"))
    ours = {k: tuple(s) for k, s in tf.train.list_variables(written) if k.startswith("model/")}
    assert ours == {e["key"]: tuple(e["shape"]) for e in fixture.entries}


def test_outputs_match_the_od_api(fixture: Fixture) -> None:
    ref = fixture.ref
    _close(fixture.images, ref["preprocessed_images"], "preprocessed_images")
    out = fixture.model(fixture.images, training=False)
    for i, feature in enumerate(out["feature_maps"]):
        _close(feature, ref[f"predict/feature_maps/{i}"], f"feature map {i}")
    anchors = fixture.model.anchors(out["feature_maps"])
    _close(anchors, ref["anchors"], "anchors")
    _close(out["box_encodings"], ref["predict/box_encodings"], "box_encodings")
    _close(out["class_predictions_with_background"],
           ref["predict/class_predictions_with_background"], "class predictions")
    post = fixture.model.postprocess(out)
    for key in ("raw_detection_boxes", "raw_detection_scores", "detection_boxes",
                "detection_scores", "detection_multiclass_scores"):
        _close(post[key], ref[f"postprocess/{key}"], key)
    # The fixtures' neighbouring scores differ by >= 4e-6, far above our differences: the
    # same detections come out in the same order.
    for key in ("detection_classes", "detection_anchor_indices", "num_detections"):
        np.testing.assert_array_equal(np.asarray(post[key]), ref[f"postprocess/{key}"], key)


@pytest.mark.parametrize("mode", ["loss_bn_train", "loss_bn_frozen"])
def test_losses_match_the_od_api(fixture: Fixture, mode: str) -> None:
    import tensorflow as tf

    boxes, classes, valid = fixture.ground_truth()
    out = fixture.model(fixture.images, training=mode == "loss_bn_train")
    # Batch statistics moved the moving ones; the OD API's frozen losses are of fresh ones.
    tf.train.Checkpoint(model=fixture.model).read(fixture.prefix)
    losses = fixture.model.loss(out, boxes, classes, valid)
    ours = {"localization_loss": float(losses["localization_loss"]),
            "classification_loss": float(losses["classification_loss"]),
            "regularization_loss": float(fixture.model.regularization_loss())}
    ours["total_loss"] = sum(ours.values())
    for term, value in ours.items():
        theirs = float(fixture.ref[f"{mode}/Loss/{term}"])
        assert abs(value - theirs) <= LOSS_TOLERANCE * abs(theirs), f"{term}: {value} vs {theirs}"


def _zoo_configs_with_a_variable_list() -> list[str]:
    from tests.zoo import STRUCTURE

    return [name for name, fixture in sorted(STRUCTURE.items())
            if fixture and (FIXTURES / "fixtures" / fixture / "variables-90.json").exists()]


@pytest.mark.parametrize("name", _zoo_configs_with_a_variable_list())
def test_a_zoo_config_as_published_has_the_zoo_checkpoints_keys(name: str,
                                                                 tmp_path: Path) -> None:
    """Built from the unedited zoo file (90 classes), our model has exactly the keys and
    shapes of the OD API's model of that file (``variables-90.json``: the 1024 and 640 sizes
    of one network share it), so a downloaded ``ckpt-0`` restores with no key left over. The
    variables do not depend on the input size: a small one builds them."""
    import tensorflow as tf

    from tests.zoo import CONFIGS, STRUCTURE
    from trainer.detection.families.ssd.model import SsdModel
    from trainer.detection.families.ssd.spec import read

    spec = read(CONFIGS[name])
    model = SsdModel(spec)
    size = spec.height if spec.size_multiple == 1 else 128
    out = model(tf.zeros([1, size, size, 3]), training=False)
    if spec.size_multiple == 1:  # the plain SSD at its 300x300: SSD300's 1917 anchors
        assert model.anchors(out["feature_maps"]).shape[0] == 1917
    written = tf.train.Checkpoint(model=model).write(str(tmp_path / "ours"))
    ours = {k: tuple(s) for k, s in tf.train.list_variables(written) if k.startswith("model/")}
    listed = json.loads((FIXTURES / "fixtures" / STRUCTURE[name] / "variables-90.json")
                        .read_text())["variables"]
    assert ours == {v["key"]: tuple(v["shape"]) for v in listed}
