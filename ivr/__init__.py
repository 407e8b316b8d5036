"""IVR: call flows as validated data, run by pure engines (no I/O, no clock).

`schema` (flow models) -> `validate` (whole-flow checks) -> `flow_engine` (runs calls;
events and commands in `flow_events`, prompt keys in `prompts`, business hours in
`hours`). `engine` is the walking skeleton's single-menu engine, kept until the core
switches to `flow_engine`.
"""
