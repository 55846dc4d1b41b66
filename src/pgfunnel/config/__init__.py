"""Configuration: the pgbouncer.ini dialect, the settings table, userlist.txt."""
