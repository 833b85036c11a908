"""Delivery of result objects to the PACS: the C-STORE SCU and the persistent outbox."""
