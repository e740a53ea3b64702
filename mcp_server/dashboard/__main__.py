"""`python -m mcp_server.dashboard PROJECT [--port N]`: the dashboard process (serve.open_dashboard starts it)."""

import argparse
import logging
import sys
from pathlib import Path

from mcp_server.dashboard.serve import run

parser = argparse.ArgumentParser(prog="python -m mcp_server.dashboard")
parser.add_argument("project", type=Path)
parser.add_argument("--port", type=int, default=0)
args = parser.parse_args()
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
sys.exit(run(args.project.resolve(), args.port))
