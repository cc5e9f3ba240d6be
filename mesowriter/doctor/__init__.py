"""`mesowriter doctor`: will this rig hold the planned run? Checked before it starts.

An hour-long acquisition that runs out of disk, memory or speed after forty
minutes costs the lab the animal's session. The doctor measures what decides
that on the rig itself, in the folder the run will write to (direct I/O,
write speed, free space, shared memory and RAM for the rings, codecs, cores),
compares each figure with the plan, writes a short real run through
`WriterService` and reads it back, and gives one verdict with its reasons.
"""

from mesowriter.doctor._checks import Check, Status
from mesowriter.doctor._plan import Plan, PlanError, parse_shape
from mesowriter.doctor._run import (
    DEFAULT_ROUNDS,
    DEFAULT_TEST_BYTES,
    EXIT_CANNOT_CHECK,
    EXIT_CODES,
    EXIT_INTERRUPTED,
    Report,
    run_doctor,
)

__all__ = [
    "DEFAULT_ROUNDS",
    "DEFAULT_TEST_BYTES",
    "EXIT_CANNOT_CHECK",
    "EXIT_CODES",
    "EXIT_INTERRUPTED",
    "Check",
    "Plan",
    "PlanError",
    "Report",
    "Status",
    "parse_shape",
    "run_doctor",
]
