//! Security tests: restore (see the module list in `security`).
