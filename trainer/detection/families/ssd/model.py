"""The OD API's SSD meta-architecture on tf-keras: preprocess (TF1 bilinear stretch to the fixed
shape, the backbone's scaling), predict (feature maps, box codes, class logits per anchor),
loss (arg-max matching, smooth-L1 and sigmoid focal, normalised by the matches) and postprocess
(sigmoid scores, per-class NMS, boxes clipped to the image).

The model's attributes ``_feature_extractor`` and ``_box_predictor`` are the OD API's, so
``tf.train.Checkpoint(model=SsdModel(...))`` reads and writes a zoo checkpoint's keys."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras

from trainer.detection.families.ssd import boxes, features, predictors
from trainer.detection.families.ssd.layers import BnMode
from trainer.detection.families.ssd.spec import SsdSpec, WeightSharedPredictor


class SsdModel(tf_keras.Model):
    """One SSD of an ``ssd`` block (``trainer.detection.families.ssd.spec``)."""

    def __init__(self, spec: SsdSpec, sync_bn: bool = False):
        super().__init__()
        self.spec = spec
        bn = BnMode(spec.freeze_batchnorm, sync_bn)
        self._feature_extractor = features.extractor(spec.extractor, bn)
        per_location = spec.num_anchors_per_location
        if isinstance(spec.predictor, WeightSharedPredictor):
            self._box_predictor = predictors.WeightShared(
                spec.predictor, spec.num_classes, per_location[0], len(per_location), bn)
        else:
            self._box_predictor = predictors.Convolutional(
                spec.predictor, spec.num_classes, per_location, bn)
        self._anchors: dict[tuple[int, int], Any] = {}

    @property
    def checkpoint_items(self) -> dict[str, Any]:
        """What a checkpoint holds: the zoo's layout, everything under ``model/``."""
        return {"model": self}

    def preprocess(self, images: Any) -> Any:
        """Images of any size (0-255) stretched to the fixed shape with TF1's bilinear resize
        (no half-pixel centres), then scaled as the backbone expects."""
        resized = tf.compat.v1.image.resize_images(
            tf.cast(images, tf.float32), [self.spec.height, self.spec.width],
            method=tf.image.ResizeMethod.BILINEAR, align_corners=False)
        return features.preprocess(self.spec.extractor.backbone, resized)

    def call(self, images: Any, training: Any = None) -> dict[str, Any]:
        """``predict``: preprocessed images -> feature maps, box codes, class logits."""
        maps = self._feature_extractor(images, training=training)
        out = self._box_predictor(maps, training=training)
        out["feature_maps"] = maps
        return out

    def anchors(self, maps: list[Any]) -> Any:
        """The anchors of these feature maps (computed once per grid)."""
        grids = tuple((int(m.shape[1]), int(m.shape[2])) for m in maps)
        if grids not in self._anchors:  # NumPy: a tensor would belong to one graph
            self._anchors[grids] = boxes.anchors(self.spec.anchors, list(grids),
                                                 self.spec.height, self.spec.width)
        return tf.constant(self._anchors[grids])

    def targets(self, anchors: Any, gt_boxes: Any, gt_classes: Any, gt_valid: Any) -> Any:
        """Per-image targets of a padded batch (``gt_classes`` 0-based, ``gt_valid`` [B, M])."""
        s = self.spec

        def one(args: Any) -> Any:
            b, c, v = args
            return boxes.targets(anchors, b, c, v, s.num_classes, s.matched_threshold,
                                 s.unmatched_threshold, s.force_match_for_each_row,
                                 s.box_coder_scales)

        spec = {k: tf.TensorSpec(None, tf.float32) for k in
                ("cls_targets", "cls_weights", "reg_targets", "reg_weights")}
        return tf.map_fn(one, (gt_boxes, tf.cast(gt_classes, tf.int32), gt_valid),
                         fn_output_signature=spec)

    def loss(self, prediction: dict[str, Any], gt_boxes: Any, gt_classes: Any,
             gt_valid: Any, reduce: Any = None) -> dict[str, Any]:
        """The OD API's SSD losses, normalised by the matched anchors; ``reduce`` turns this
        batch's count into the one to divide by (the trainer's: the global batch's)."""
        s = self.spec
        t = self.targets(self.anchors(prediction["feature_maps"]), gt_boxes, gt_classes,
                         gt_valid)
        codes = prediction[predictors.BOX]
        diff = tf.abs(codes - t["reg_targets"])
        delta = s.smooth_l1_delta
        huber = tf.where(diff <= delta, 0.5 * diff * diff, delta * (diff - 0.5 * delta))
        loc = tf.reduce_sum(tf.reduce_sum(huber, -1) * t["reg_weights"])
        logits = prediction[predictors.CLASS]
        labels = t["cls_targets"]
        cross = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        prob = tf.sigmoid(logits)
        p_t = labels * prob + (1 - labels) * (1 - prob)
        focal = tf.pow(1.0 - p_t, s.focal_gamma) * cross
        if s.focal_alpha is not None:
            focal *= labels * s.focal_alpha + (1 - labels) * (1 - s.focal_alpha)
        cls = tf.reduce_sum(focal * t["cls_weights"][..., None])
        normalizer = tf.reduce_sum(t["reg_weights"])
        if reduce is not None:
            normalizer = reduce(normalizer)
        normalizer = tf.maximum(normalizer, 1.0) if s.normalize_by_num_matches else 1.0
        loc_normalizer = normalizer * (predictors.CODE_SIZE if s.normalize_loc_by_codesize
                                       else 1)
        return {"localization_loss": s.localization_weight * loc / loc_normalizer,
                "classification_loss": s.classification_weight * cls / normalizer,
                "num_matches": tf.reduce_sum(t["reg_weights"])}

    def regularization_loss(self) -> Any:
        """The sum of the layers' L2 terms (the OD API's ``regularization_losses``)."""
        return tf.add_n(self.losses) if self.losses else tf.constant(0.0)

    def postprocess(self, prediction: dict[str, Any]) -> dict[str, Any]:
        """Decoded boxes, sigmoid scores, per-class NMS; classes 0-based."""
        s = self.spec
        anchors = self.anchors(prediction["feature_maps"])
        decoded = boxes.decode(prediction[predictors.BOX], anchors[None], s.box_coder_scales)
        logits = prediction[predictors.CLASS] / s.logit_scale
        scores = tf.sigmoid(logits) if s.score_converter == "SIGMOID" else logits

        def one(args: Any) -> Any:
            return _nms(args[0], args[1], s)

        signature = {"detection_boxes": tf.TensorSpec([s.max_total_detections, 4], tf.float32),
                     "detection_scores": tf.TensorSpec([s.max_total_detections], tf.float32),
                     "detection_classes": tf.TensorSpec([s.max_total_detections], tf.float32),
                     "detection_anchor_indices": tf.TensorSpec([s.max_total_detections],
                                                               tf.int32),
                     "num_detections": tf.TensorSpec([], tf.float32)}
        out = tf.map_fn(one, (decoded, scores), fn_output_signature=signature)
        out["detection_multiclass_scores"] = tf.gather(scores, out["detection_anchor_indices"],
                                                       batch_dims=1)
        out["raw_detection_boxes"] = decoded
        out["raw_detection_scores"] = scores
        return out


def _nms(decoded: Any, scores: Any, s: SsdSpec) -> dict[str, Any]:
    """One image: NMS per class on the unclipped boxes, the best ``max_total_detections`` of
    all classes, then clipped to the image; padded with zeros."""
    picks_boxes, picks_scores, picks_classes, picks_index = [], [], [], []
    count = tf.shape(decoded)[0]
    for c in range(s.num_classes):
        class_scores = scores[:, c + 1]
        keep, kept = tf.image.non_max_suppression_with_scores(
            decoded, class_scores, tf.minimum(s.max_detections_per_class, count),
            iou_threshold=s.iou_threshold, score_threshold=s.score_threshold)
        picks_boxes.append(tf.gather(decoded, keep))
        picks_scores.append(kept)
        picks_classes.append(tf.fill(tf.shape(keep), float(c)))
        picks_index.append(keep)
    all_scores = tf.concat(picks_scores, 0)
    total = tf.minimum(s.max_total_detections, tf.shape(all_scores)[0])
    top = tf.math.top_k(all_scores, total, sorted=True).indices
    chosen = tf.gather(tf.concat(picks_boxes, 0), top)
    chosen = tf.clip_by_value(chosen, 0.0, 1.0)
    pad = s.max_total_detections - total
    return {"detection_boxes": tf.pad(chosen, [[0, pad], [0, 0]]),
            "detection_scores": tf.pad(tf.gather(all_scores, top), [[0, pad]]),
            "detection_classes": tf.pad(tf.gather(tf.concat(picks_classes, 0), top), [[0, pad]]),
            "detection_anchor_indices": tf.pad(tf.gather(tf.concat(picks_index, 0), top),
                                               [[0, pad]]),
            "num_detections": tf.cast(total, tf.float32)}
