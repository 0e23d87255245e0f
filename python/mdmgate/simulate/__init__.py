"""``mdmgate simulate``: a fleet of simulated Windows and Apple devices.

The fleet checks in against a gateway (this one or any OMA-DM / Apple MDM server) for load,
soak and capacity runs; a correctness ledger records what each device received and answered
and is checked against the gateway's admin API at the end (docs in ``cli.py``).
"""
