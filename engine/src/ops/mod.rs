//! The operations: one module per command the engine carries out. Each takes typed options
//! and returns a typed report (`Serialize`, so front ends render it as text or JSON without
//! repository logic of their own). An operation that changes the repository first computes
//! a plan and then applies it, so a dry run is "compute the plan, do not apply it".
//!
//! What each needs is in its signature: an operation that writes takes a
//! [`SharedLock`](crate::SharedLock) (backup) or an [`ExclusiveLock`](crate::ExclusiveLock)
//! (forget, prune, repair); one that reads trees and blobs takes an
//! [`Indexed`](crate::Indexed) repository.
//!
//! | module | operation |
//! |---|---|
//! | [`backup`] | read sources into a new snapshot |
//! | [`restore`] | plan and write a snapshot's (sub)tree into a directory |
//! | [`ls`] | find a node, walk a snapshot's tree |
//! | [`forget`] | retention: plan which snapshots to remove (for `forget` and the job alike), apply |
//! | [`prune`] | remove unused data and the leftovers of killed processes |
//! | [`check`] | verify structure and contents, and say how to repair |
//! | [`repair`] | rebuild the index, drop damaged packs, rewrite damaged snapshots |
//! | [`stats`] | counts and sizes |
//! | [`tag`] | change snapshots' tags (plan, apply) |
//! | [`copy`] | snapshots from one repository into another |
//! | [`rewrite`] | take paths out of existing snapshots |
//! | [`diff`] | what changed between two snapshots |
//! | [`find`] | which snapshots hold a file |
//! | [`dump`] | a file's content, or a directory as a tar stream |
//! | [`job`] | the nightly job: sources, retention, prune, metrics |
//! | [`k3s_restore`] | restore a cluster-state snapshot and verify its datastore |

pub mod backup;
pub mod check;
pub mod copy;
pub mod diff;
pub mod dump;
pub mod find;
pub mod forget;
pub mod job;
pub mod k3s_restore;
pub mod ls;
pub mod migrate;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod rewrite;
pub mod stats;
pub mod tag;
