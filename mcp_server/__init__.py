"""trainguard's MCP server and the plain modules it is a thin layer over.

Importing this package is cheap on purpose: the run supervisor and the CLI import its
modules without pulling in the MCP SDK, and nothing here ever imports torch.
"""

__version__ = "0.1.0"
