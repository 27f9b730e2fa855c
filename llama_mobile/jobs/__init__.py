"""Jobs: request -> stages -> typed result, composed from the stage packages (export, quantize, runtime_harness)."""
