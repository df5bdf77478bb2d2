//! `locks/<id>`: who is using the repository.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// A lock.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lock {
    /// Written (or last refreshed) at.
    pub time: Timestamp,
    /// Exclusive (maintenance) or shared (backup, restore, check).
    pub exclusive: bool,
    /// Host holding it.
    pub hostname: String,
    /// User holding it.
    pub username: String,
    /// Process id on that host.
    pub pid: u32,
}
