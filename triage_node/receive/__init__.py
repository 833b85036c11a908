"""The Storage SCP: association policy, presentation contexts, and the durable C-STORE handler."""
