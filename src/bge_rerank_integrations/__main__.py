"""``python -m bge_rerank_integrations``: the ``bge-rerank`` command line."""

from __future__ import annotations

import sys

from bge_rerank_integrations.cli import main

sys.exit(main())
