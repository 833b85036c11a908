"""Series records: completion rules, routing rules and geometry checks."""
