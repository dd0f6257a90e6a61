//! Test support shared by the vidx crates: real servers started on loopback ports by the test
//! harness itself, never mocks. Used only as a dev-dependency.

pub mod s3;
