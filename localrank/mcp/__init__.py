"""`localrank mcp`: the Model Context Protocol server for coding agents and editors, a thin
client of the running daemon (`server`), served over stdio or Streamable HTTP (`transports`).
Imports nothing of the daemon itself: the CLI hands it a way to reach one."""
