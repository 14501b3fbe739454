#![no_std]
// Empty: see Cargo.toml for why this target exists. The program is src/main.rs.
