"""The part of the OD API's ``pipeline.config`` schema this trainer reads, as a protobuf message
class, so protobuf's own ``text_format`` parses real files (``#`` comments, ``{`` and ``: {``
blocks, trailing commas or semicolons, either quote, repeated fields, enum names).

Field numbers are irrelevant to the text format. A field missing here is one the trainer does
not read: ``trainer.pipeline.config`` refuses a config that sets it (the second, strict pass).
"""

from __future__ import annotations

from typing import Any

# message -> [(field, type, repeated)]; a type is a scalar name, an enum in ENUMS or a message.
SCHEMA: dict[str, list[tuple[str, str, bool]]] = {
    "TrainEvalPipelineConfig": [("model", "DetectionModel", False),
                                ("train_config", "TrainConfig", False),
                                ("train_input_reader", "InputReader", False),
                                ("eval_config", "EvalConfig", False),
                                ("eval_input_reader", "InputReader", True)],
    "DetectionModel": [("ssd", "Ssd", False), ("faster_rcnn", "Any", False),
                       ("center_net", "Any", False)],
    "Ssd": [("num_classes", "int32", False), ("image_resizer", "ImageResizer", False),
            ("freeze_batchnorm", "bool", False), ("inplace_batchnorm_update", "bool", False),
            ("feature_extractor", "FeatureExtractor", False),
            ("box_predictor", "BoxPredictor", False),
            ("anchor_generator", "AnchorGenerator", False),
            ("box_coder", "BoxCoder", False), ("matcher", "Matcher", False),
            ("similarity_calculator", "Similarity", False),
            ("encode_background_as_zeros", "bool", False),
            ("normalize_loss_by_num_matches", "bool", False),
            ("normalize_loc_loss_by_codesize", "bool", False),
            ("loss", "Loss", False), ("post_processing", "PostProcessing", False)],
    "FeatureExtractor": [("type", "string", False), ("use_depthwise", "bool", False),
                         ("fpn", "Fpn", False), ("min_depth", "int32", False),
                         ("depth_multiplier", "float", False),
                         ("pad_to_multiple", "int32", False),
                         ("conv_hyperparams", "Hyperparams", False),
                         ("override_base_feature_extractor_hyperparams", "bool", False),
                         ("use_explicit_padding", "bool", False)],
    "Fpn": [("min_level", "int32", False), ("max_level", "int32", False),
            ("additional_layer_depth", "int32", False)],
    "Hyperparams": [("activation", "Activation", False), ("regularizer", "Regularizer", False),
                    ("initializer", "Initializer", False), ("batch_norm", "BatchNorm", False)],
    "Regularizer": [("l2_regularizer", "Weight", False), ("l1_regularizer", "Weight", False)],
    "Weight": [("weight", "float", False)],
    "Initializer": [("truncated_normal_initializer", "Normal", False),
                    ("random_normal_initializer", "Normal", False),
                    ("variance_scaling_initializer", "VarianceScaling", False),
                    ("keras_initializer_by_name", "string", False)],
    "Normal": [("mean", "float", False), ("stddev", "float", False)],
    "VarianceScaling": [("factor", "float", False), ("uniform", "bool", False),
                        ("mode", "FanMode", False)],
    "BatchNorm": [("decay", "float", False), ("epsilon", "float", False),
                  ("scale", "bool", False), ("center", "bool", False), ("train", "bool", False)],
    "BoxPredictor": [("weight_shared_convolutional_box_predictor", "WeightShared", False),
                     ("convolutional_box_predictor", "Convolutional", False)],
    "Convolutional": [("conv_hyperparams", "Hyperparams", False), ("min_depth", "int32", False),
                      ("max_depth", "int32", False),
                      ("num_layers_before_predictor", "int32", False),
                      ("use_dropout", "bool", False),
                      ("dropout_keep_probability", "float", False),
                      ("kernel_size", "int32", False), ("box_code_size", "int32", False),
                      ("apply_sigmoid_to_scores", "bool", False),
                      ("class_prediction_bias_init", "float", False),
                      ("use_depthwise", "bool", False)],
    "WeightShared": [("depth", "int32", False), ("num_layers_before_predictor", "int32", False),
                     ("kernel_size", "int32", False), ("use_depthwise", "bool", False),
                     ("class_prediction_bias_init", "float", False),
                     ("conv_hyperparams", "Hyperparams", False),
                     ("share_prediction_tower", "bool", False),
                     ("apply_batch_norm", "bool", False), ("use_dropout", "bool", False)],
    "AnchorGenerator": [("multiscale_anchor_generator", "Multiscale", False),
                        ("ssd_anchor_generator", "SsdAnchors", False),
                        ("grid_anchor_generator", "Any", False)],
    "Multiscale": [("min_level", "int32", False), ("max_level", "int32", False),
                   ("anchor_scale", "float", False), ("aspect_ratios", "float", True),
                   ("scales_per_octave", "int32", False), ("normalize_coordinates", "bool", False)],
    "SsdAnchors": [("num_layers", "int32", False), ("min_scale", "float", False),
                   ("max_scale", "float", False), ("scales", "float", True),
                   ("aspect_ratios", "float", True),
                   ("interpolated_scale_aspect_ratio", "float", False),
                   ("reduce_boxes_in_lowest_layer", "bool", False),
                   ("base_anchor_height", "float", False), ("base_anchor_width", "float", False),
                   ("height_stride", "int32", True), ("width_stride", "int32", True),
                   ("height_offset", "int32", True), ("width_offset", "int32", True)],
    "BoxCoder": [("faster_rcnn_box_coder", "FasterRcnnBoxCoder", False),
                 ("mean_stddev_box_coder", "Any", False), ("square_box_coder", "Any", False),
                 ("keypoint_box_coder", "Any", False)],
    "FasterRcnnBoxCoder": [("y_scale", "float", False), ("x_scale", "float", False),
                           ("height_scale", "float", False), ("width_scale", "float", False)],
    "Matcher": [("argmax_matcher", "ArgMax", False), ("bipartite_matcher", "Any", False)],
    "ArgMax": [("matched_threshold", "float", False), ("unmatched_threshold", "float", False),
               ("ignore_thresholds", "bool", False),
               ("negatives_lower_than_unmatched", "bool", False),
               ("force_match_for_each_row", "bool", False), ("use_matmul_gather", "bool", False)],
    "Similarity": [("iou_similarity", "Any", False), ("neg_sq_dist_similarity", "Any", False),
                   ("ioa_similarity", "Any", False),
                   ("thresholded_iou_similarity", "Any", False)],
    "Loss": [("classification_loss", "ClassificationLoss", False),
             ("localization_loss", "LocalizationLoss", False),
             ("classification_weight", "float", False),
             ("localization_weight", "float", False), ("hard_example_miner", "Any", False)],
    "ClassificationLoss": [("weighted_sigmoid_focal", "Focal", False),
                           ("weighted_sigmoid", "Any", False),
                           ("weighted_softmax", "Any", False),
                           ("bootstrapped_sigmoid", "Any", False)],
    "Focal": [("alpha", "float", False), ("gamma", "float", False)],
    "LocalizationLoss": [("weighted_smooth_l1", "SmoothL1", False),
                         ("weighted_l2", "Any", False), ("weighted_iou", "Any", False),
                         ("weighted_giou", "Any", False)],
    "SmoothL1": [("delta", "float", False)],
    "PostProcessing": [("batch_non_max_suppression", "Nms", False),
                       ("score_converter", "ScoreConverter", False),
                       ("logit_scale", "float", False)],
    "Nms": [("score_threshold", "float", False), ("iou_threshold", "float", False),
            ("max_detections_per_class", "int32", False),
            ("max_total_detections", "int32", False), ("use_static_shapes", "bool", False),
            ("use_class_agnostic_nms", "bool", False), ("soft_nms_sigma", "float", False)],
    # A message the trainer refuses as a whole: anything inside is accepted by the parser.
    "Any": [],
    "ImageResizer": [("fixed_shape_resizer", "FixedShape", False),
                     ("keep_aspect_ratio_resizer", "Any", False)],
    "FixedShape": [("height", "int32", False), ("width", "int32", False)],
    "TrainConfig": [("batch_size", "int32", False), ("num_steps", "int32", False),
                    ("fine_tune_checkpoint", "string", False),
                    ("fine_tune_checkpoint_type", "string", False),
                    ("fine_tune_checkpoint_version", "CheckpointVersion", False),
                    ("optimizer", "Optimizer", False),
                    ("data_augmentation_options", "Augmentation", True),
                    ("gradient_clipping_by_norm", "float", False),
                    ("max_number_of_boxes", "int32", False),
                    ("add_regularization_loss", "bool", False),
                    ("sync_replicas", "bool", False), ("startup_delay_steps", "float", False),
                    ("replicas_to_aggregate", "int32", False),
                    ("use_bfloat16", "bool", False),
                    ("unpad_groundtruth_tensors", "bool", False)],
    "Augmentation": [("random_crop_image", "RandomCrop", False),
                     ("ssd_random_crop", "SsdRandomCrop", False),
                     ("random_adjust_brightness", "MaxDelta", False),
                     ("random_adjust_contrast", "DeltaRange", False),
                     ("random_adjust_hue", "MaxDelta", False),
                     ("random_adjust_saturation", "DeltaRange", False),
                     ("random_distort_color", "DistortColor", False),
                     ("random_absolute_pad_image", "AbsolutePad", False)] + [
        (name, "Any", False) for name in (
        "random_horizontal_flip", "random_scale_crop_and_pad_to_square",
        "random_image_scale", "random_pad_image", "random_vertical_flip", "random_rotation90",
        "random_black_patches", "random_patch_gaussian", "random_jitter_boxes",
        "random_resize_method", "autoaugment_image", "drop_label_probabilistically")],
    "RandomCrop": [(name, "float", False) for name in (
        "min_object_covered", "min_aspect_ratio", "max_aspect_ratio", "min_area", "max_area",
        "overlap_thresh", "random_coef")] + [("clip_boxes", "bool", False)],
    "SsdRandomCrop": [("operations", "SsdRandomCropOperation", True)],
    "MaxDelta": [("max_delta", "float", False)],
    "DeltaRange": [("min_delta", "float", False), ("max_delta", "float", False)],
    "DistortColor": [("color_ordering", "int32", False)],
    "AbsolutePad": [("max_height_padding", "int32", False),
                    ("max_width_padding", "int32", False), ("pad_color", "float", True)],
    "SsdRandomCropOperation": [(name, "float", False) for name in (
        "min_object_covered", "min_aspect_ratio", "max_aspect_ratio", "min_area", "max_area",
        "overlap_thresh", "random_coef")],
    "Optimizer": [("momentum_optimizer", "OptimizerParams", False),
                  ("adam_optimizer", "Any", False), ("rms_prop_optimizer", "Any", False),
                  ("use_moving_average", "bool", False)],
    "OptimizerParams": [("learning_rate", "LearningRate", False),
                        ("momentum_optimizer_value", "float", False)],
    "LearningRate": [("constant_learning_rate", "Constant", False),
                     ("exponential_decay_learning_rate", "Any", False),
                     ("manual_step_learning_rate", "Any", False),
                     ("cosine_decay_learning_rate", "Cosine", False)],
    "Constant": [("learning_rate", "float", False)],
    "Cosine": [("learning_rate_base", "float", False), ("total_steps", "int64", False),
               ("warmup_learning_rate", "float", False), ("warmup_steps", "int64", False),
               ("hold_base_rate_steps", "int64", False)],
    "EvalConfig": [("metrics_set", "string", True), ("use_moving_averages", "bool", False),
                   ("batch_size", "int32", False)],
    "InputReader": [("label_map_path", "string", False), ("shuffle", "bool", False),
                    ("num_epochs", "int32", False),
                    ("tf_record_input_reader", "TfRecordInputReader", False)],
    "TfRecordInputReader": [("input_path", "string", True)],
}
# The OD API's enums, by the names its text files use.
ENUMS: dict[str, list[str]] = {
    "Activation": ["NONE", "RELU", "RELU_6", "SWISH"],
    "ScoreConverter": ["IDENTITY", "SIGMOID", "SOFTMAX"],
    "CheckpointVersion": ["UNKNOWN", "V1", "V2"],
    "FanMode": ["FAN_IN", "FAN_OUT", "FAN_AVG"],
}
PACKAGE = "tf_finetune_od"
_SCALARS = ("int32", "int64", "float", "string", "bool")


def message_class() -> Any:
    """The ``TrainEvalPipelineConfig`` message class of ``SCHEMA``."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name=f"{PACKAGE}.proto", package=PACKAGE,
                                             syntax="proto2")
    spec = descriptor_pb2.FieldDescriptorProto
    for name, values in ENUMS.items():
        enum = fdp.enum_type.add(name=name)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    for name, fields in SCHEMA.items():
        message = fdp.message_type.add(name=name)
        for number, (fname, ftype, repeated) in enumerate(fields, start=1):
            field = message.field.add(name=fname, number=number, label=(
                spec.LABEL_REPEATED if repeated else spec.LABEL_OPTIONAL))
            if ftype in _SCALARS:
                field.type = getattr(spec, f"TYPE_{ftype.upper()}")
            else:
                field.type = spec.TYPE_ENUM if ftype in ENUMS else spec.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{ftype}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{PACKAGE}.TrainEvalPipelineConfig"))
