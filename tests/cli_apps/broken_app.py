"""An app for the CLI tests whose import fails on a missing dependency."""

from __future__ import annotations

import leanmq_cli_test_missing_dependency  # noqa: F401
