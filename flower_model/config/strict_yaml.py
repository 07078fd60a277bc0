"""Reading params.yaml and dvc.yaml strictly: what yaml.safe_load lets through silently or
slowly becomes one line before any work.

- A duplicate key: safe_load keeps the last value, so an edit above it is silently ignored.
- Anchors and aliases: neither file needs them (flower-model compose and DVC write neither), and
  a ~1 KB "billion laughs" of nested aliases expanded for minutes and then printed 58 MB.
- Size: both files are a few KB; MAX_BYTES stops a runaway file before parsing.
- Bytes that are not UTF-8, and a BOM or Windows line ends (which are fine: decoded, not refused).
"""

from pathlib import Path

import yaml

MAX_BYTES = 1 << 20  # params.yaml is ~5 KB and dvc.yaml ~4 KB; 1 MiB leaves room for any edit
UTF8_BOM = "\ufeff"


class StrictYamlError(ValueError):
    """The file cannot be read as plain YAML; the message says where and why."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and duplicate mapping keys."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise StrictYamlError(
                f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                "allowed here; write the values out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise StrictYamlError(
                    f"line {key_node.start_mark.line + 1}: key {key!r} appears twice; keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(path: Path) -> object:
    """The YAML data in `path`; StrictYamlError (one line, no path) when it cannot be."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise StrictYamlError(f"{size} bytes is larger than the {MAX_BYTES} this file can be")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise StrictYamlError(f"byte {error.start} is not UTF-8; save the file as UTF-8") from None
    try:
        return yaml.load(text.removeprefix(UTF8_BOM), Loader=_StrictLoader)
    except yaml.YAMLError as error:
        first = " ".join(str(error).split())
        raise StrictYamlError(first) from None
