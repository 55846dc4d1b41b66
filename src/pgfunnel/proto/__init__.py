"""The PostgreSQL v3 wire protocol, sans-IO: bytes in, events and bytes out."""
