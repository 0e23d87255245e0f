"""The fleet's devices and their command queues, as the application sees them: the rules
every entry point (the admin API, a CLI, a roll-out) keeps when it changes them."""
