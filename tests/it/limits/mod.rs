//! Limits: at most 500 restore points per VM across its collections, one creation or deletion
//! at a time per VM (an OS lock the kernel releases when its holder dies), unsupported sources
//! refused at `vm add` and again at each creation, unsupported disk types and uniform scale
//! sets, and block devices as sources. One module for the limits per VM, one for the sources.

mod per_vm;
mod sources;
