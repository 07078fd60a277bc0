"""Values that are facts rather than tunables (tunables live in configs/)."""

from pathlib import Path

CONFIG_DIR_NAME = "configs"
CONFIG_NAME = "config"
PARAMS_FILE = Path("params.yaml")
DVC_LOCK_FILE = Path("dvc.lock")

UINT8_MAX = 255

# Transparent pixels become white (as most viewers show them) before the alpha channel is dropped.
ALPHA_BACKGROUND = (255, 255, 255)
RESIZE_MODES = ("crop", "pad")  # crop: shorter side to size, centre crop; pad: fit, then pad
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

SPLITS = ("train", "val", "test")
RESOLVED_CONFIG_NAME = "config.resolved.yaml"

# Keep JSON outs stable byte for byte: sorted keys, fixed indentation, trailing newline.
JSON_INDENT = 2

# The widest line a command prints (a standard terminal is 80; logs are read in wider windows).
CONSOLE_WIDTH = 120
