"""IVR: call flows as validated data, run by a pure engine (no I/O, no clock).

`schema` (flow models) -> `validate` (whole-flow checks) -> `engine` (runs calls;
events and commands in `events`, prompt keys in `prompts`, business hours in `hours`).
The core (`core.app`) carries the engine's commands out on the media workers.
"""
