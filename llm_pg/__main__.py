"""`python -m llm_pg` (and `accelerate launch -m llm_pg train ...`) runs the CLI."""

import sys

from llm_pg.cli import main

sys.exit(main())
