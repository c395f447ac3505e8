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


def base_image(kind: str, build_args: dict[str, str] | None = None) -> str:
    """The image the build starts from: the kind's, unless ``BASE_IMAGE`` is given."""
    return (build_args or {}).get("BASE_IMAGE") or BASE_IMAGES[kind]


def build_commands(kind: str, ref: str, push: bool, network: str | None = None,
                   build_args: dict[str, str] | None = None) -> list[list[str]]:
    """The docker commands that build (and push) the image. ``network``: the build's network
    (``host`` on an engine without a bridge network, where pip has no route otherwise);
    ``build_args`` pass through (``BASE_IMAGE`` overrides the kind's base)."""
    if kind not in BASE_IMAGES:
        raise ValueError(f"unknown image kind {kind!r}")
    root = source_root()
    args = {"BASE_IMAGE": base_image(kind, build_args), **(build_args or {})}
    build = ["docker", "build", "--file", str(root / "images" / "Dockerfile")]
    if network:
        build += ["--network", network]
    for key, value in args.items():
        build += ["--build-arg", f"{key}={value}"]
    commands = [[*build, "--tag", ref, str(root)]]
    if push:
        commands.append(["docker", "push", ref])
    return commands


def build(kind: str, registry: str | None = None, tag: str | None = None, push: bool = False,
          runner: Runner | None = None, network: str | None = None,
          build_args: dict[str, str] | None = None) -> str:
    """Build (and push) the image; returns its reference."""
    require("docker")
    ref = image_ref(kind, registry, tag)
    for command in build_commands(kind, ref, push, network, build_args):
        checked(command, runner or run_tool)
    return ref
