"""Chain backends: the persistent in-process EVM and its loopback JSON-RPC server."""
