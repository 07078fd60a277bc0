"""Model families; importing the package registers every one of them (see registry.py)."""

from flower_model.models import efficientnet_lite, small_cnn, torchvision_models  # noqa: F401
