"""`orstream bench`: the real pipeline measured against a device profile's budgets.

What the CLI command needs lives here, in the pipeline layer (harness, device profiles, the
report and the floors measured beside the run); benchmarks/ keeps the scripts that measure
and import this package downward."""
