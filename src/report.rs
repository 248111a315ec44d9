//! Human-readable numbers for tables, from their one home in the libraries.

pub use distill_label::progress::count;
pub use distill_quickstart::report::bytes;
