//! Security tests: mount (see the module list in `security`).
