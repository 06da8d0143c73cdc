"""A federation that stays up: a coordinator service, a site agent per organisation, and the
user commands that talk to the coordinator's HTTPS API (docs/federation.md).

The coordinator and the sites never run a job's pods themselves: they start, watch and stop
each job's actors, one OS process per actor (``foedus.cli actor``), so a crashing job never
takes a long-running service down. The job's own traffic uses the job's transport.
"""
