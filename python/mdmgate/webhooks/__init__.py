"""Webhooks: the gateway pushes its event log to consoles that subscribed.

:mod:`~mdmgate.webhooks.signing` signs each request (and tells receivers how to verify it),
:mod:`~mdmgate.webhooks.ssrf` keeps webhook URLs away from the gateway's own network,
:mod:`~mdmgate.webhooks.client` sends one request to a vetted address, and
:mod:`~mdmgate.webhooks.delivery` runs the subscriptions: one task each, one node each.
"""
