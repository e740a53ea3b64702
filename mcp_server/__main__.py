"""`python -m mcp_server` serves MCP over stdio, like `trainguard serve`."""

from mcp_server.cli import main

raise SystemExit(main(["serve"]))
