//! Security tests: sources (see the module list in `security`).
