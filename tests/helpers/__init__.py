"""Test helpers: data the tests build for themselves (no file beside the checkout is needed)."""
