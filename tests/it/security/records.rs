//! Security tests: records (see the module list in `security`).
