"""Pure pixel functions: volume loading, HU rescale, windows, blank-slice filter. No torch here."""
