//! Security tests: store (see the module list in `security`).
