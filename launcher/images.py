"""``launcher image build``: the trainer image for GPU clusters or for kind."""

from __future__ import annotations

from launcher.tools import Runner, checked, require, run_tool, source_root

IMAGE_NAME = "tf-finetune-trainer"
# The GPU image builds on the official TensorFlow GPU image, at the version the project pins.
BASE_IMAGES = {"gpu": "tensorflow/tensorflow:2.20.0-gpu", "cpu": "python:3.11-slim-bookworm"}


def image_ref(kind: str, registry: str | None = None, tag: str | None = None) -> str:
    """``[registry/]tf-finetune-trainer:<tag or kind>``: by default what the profiles expect
    (``gke``/``generic``: ``:gpu``, ``kind``: ``:cpu``)."""
    prefix = f"{registry.rstrip('/')}/" if registry else ""
    return f"{prefix}{IMAGE_NAME}:{tag or kind}"


def build_commands(kind: str, ref: str, push: bool) -> list[list[str]]:
    """The docker commands that build (and push) the image."""
    if kind not in BASE_IMAGES:
        raise ValueError(f"unknown image kind {kind!r}")
    root = source_root()
    commands = [["docker", "build", "--file", str(root / "images" / "Dockerfile"),
                 "--build-arg", f"BASE_IMAGE={BASE_IMAGES[kind]}", "--tag", ref, str(root)]]
    if push:
        commands.append(["docker", "push", ref])
    return commands


def build(kind: str, registry: str | None = None, tag: str | None = None, push: bool = False,
          runner: Runner = run_tool) -> str:
    """Build (and push) the image; returns its reference."""
    require("docker")
    ref = image_ref(kind, registry, tag)
    for command in build_commands(kind, ref, push):
        checked(command, runner)
    return ref
