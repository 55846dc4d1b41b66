"""The pure pool scheduler: clients, servers, pools and the janitor, with time passed in."""
