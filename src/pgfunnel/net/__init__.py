"""Everything asyncio: `pgfunnel serve`, the App with its commands and signals, listeners,
client and server connections, the janitor tick."""
