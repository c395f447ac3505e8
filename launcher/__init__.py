"""Launch distributed TensorFlow fine-tuning on Kubernetes. Never imports TensorFlow."""

__version__ = "0.1.0"
