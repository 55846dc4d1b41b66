"""Everything asyncio: listeners, client and server connections, the janitor tick."""
