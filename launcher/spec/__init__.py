"""The job spec: its types (``model``), where it comes from (``load``) and its rules beyond types
(``checks``). What the rest of the launcher uses is imported from here."""

from launcher.spec.checks import image_warnings
from launcher.spec.load import (
    PROFILE_DEFAULTS,
    PROFILES,
    SpecSource,
    apply_sets,
    build_spec,
    load_spec,
    read_spec_file,
)
from launcher.spec.model import JobSpec, dump_spec, given_fields, to_data, training_values

__all__ = ["PROFILES", "PROFILE_DEFAULTS", "JobSpec", "SpecSource", "apply_sets", "build_spec",
           "dump_spec", "given_fields", "image_warnings", "load_spec", "read_spec_file",
           "to_data", "training_values"]
