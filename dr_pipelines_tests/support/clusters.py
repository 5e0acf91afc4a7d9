"""Settings every test cluster runs with: what makes the harness fast without changing what tests prove.

fsync=off: the suite's clusters are thrown away, and the crashes tests inject (kill -9 of a server
or of drp) kill processes, not the machine, so the kernel's page cache still holds every write and
a test sees exactly what it would see with fsync on. A cluster created with it is initdb'd with
--no-sync too (core/pg/cluster.py). synchronous_commit stays on: a killed server must not lose a
commit a test already saw succeed. A test that measures or asserts durability creates its cluster
without these settings.
"""

from __future__ import annotations

TEST_CLUSTER_SETTINGS: dict[str, str] = {"fsync": "off"}
