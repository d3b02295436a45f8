"""The queue logic, by concern; the backends only run statements.

- :mod:`.checks`: limits and the validators of arguments and settings
- :mod:`.produce`: payloads and items to validated, encoded new messages, and storing them
- :mod:`.group_commit`: concurrent enqueues sharing one transaction
- :mod:`.consume`: claims, the wait plan shared by sync and asyncio, lease memory and fencing
- :mod:`.convert`: stored rows to Messages and dicts, poison isolation
- :mod:`.upkeep`: the maintenance cadence and gauges
- :mod:`.admin`: dead letters, purges, listings and counts
- :mod:`.parts`: what those share (backend, codec, clock, metrics, signals) for one queue
- :mod:`.compat`: the 0.1.0 names, gathered in one block
- :mod:`.queue`: class Queue, the public methods, each short and delegating
"""
