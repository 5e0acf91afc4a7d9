"""drp health: a live server examined for incident response (connections, replication, archiving, disk)."""
