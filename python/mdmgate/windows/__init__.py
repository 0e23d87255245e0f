"""Windows devices over OMA-DM (SyncML 1.2)."""
