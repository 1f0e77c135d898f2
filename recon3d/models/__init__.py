"""Networks as plain nn.Modules: explicit keyword arguments, no config objects, no Lightning."""
