"""The daemon: aiohttp app factory, the model worker and scheduler, routes per API dialect."""
