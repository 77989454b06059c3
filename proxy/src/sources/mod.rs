//! Where the backend set comes from, besides `-d`: a file (`file`), or the operator's
//! watch channel (`watch`). Each feeds the same [`crate::engine::Handle::set_backends`].

pub mod file;
pub mod watch;
