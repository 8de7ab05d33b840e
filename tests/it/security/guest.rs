//! Security tests: guest (see the module list in `security`).
