"""Networks, the model registry and the analyzers that turn a Volume into findings."""
