//! End-to-end tests that drive the real `cairn` binary.
//!
//! - `util.rs`: the harness. [`util::Env`] is a temp dir with a repository (cheap KDF);
//!   `run`/`ok`/`json`/`backup` run the binary Cargo built for this test
//!   (`CARGO_BIN_EXE_cairn`) with `CAIRN_PASSWORD` set and return exit code, stdout and
//!   stderr. `assert_trees_equal` compares two trees exactly.
//! - `rest.rs` starts `cairn serve` (HTTPS, a private CA made with openssl) per test.
//! - `s3.rs` runs against a real S3 server (Garage, started by `.ci/run`) when
//!   `AWS_ENDPOINT_URL`/`S3_BUCKET` are set; `CAIRN_TEST_S3_REQUIRED=1` makes them mandatory.
//! - The tests run as root (chown, devices, setpriv to an unprivileged user) on a file system
//!   with sparse files and `user.*` xattrs (ext4, xfs, btrfs, tmpfs).
#![allow(clippy::unwrap_used)]

mod backup_restore;
mod copy;
mod crash;
mod errors;
mod explore;
mod format;
mod hardening;
mod harness;
mod incremental;
mod job;
mod k3s;
mod keys;
mod listing;
mod rest;
mod retention;
mod s3;
mod safety;
mod sftp;
mod util;
mod writers;
