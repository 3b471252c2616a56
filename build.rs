//! Keeps `src/messages_capnp.rs`, the Rust generated from `schema/messages.capnp`, honest.
//!
//! The generated file is committed, so a machine without the Cap'n Proto compiler still builds.
//! Where `capnp` is on PATH, this script generates the code afresh and compares:
//! * `MIORAFT_REGENERATE=1`: a difference is written to `src/messages_capnp.rs`;
//! * `MIORAFT_CHECK_GENERATED=1` (CI): a difference, or a missing compiler, fails the build;
//! * otherwise a difference is a build warning.

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

const SCHEMA: &str = "schema/messages.capnp";
const COMMITTED: &str = "src/messages_capnp.rs";

fn main() {
    println!("cargo:rerun-if-changed={SCHEMA}");
    println!("cargo:rerun-if-changed={COMMITTED}");
    println!("cargo:rerun-if-env-changed=MIORAFT_REGENERATE");
    println!("cargo:rerun-if-env-changed=MIORAFT_CHECK_GENERATED");
    let regenerate = env::var_os("MIORAFT_REGENERATE").is_some_and(|v| v == "1");
    let check = env::var_os("MIORAFT_CHECK_GENERATED").is_some_and(|v| v == "1");

    let compiler_present = Command::new("capnp")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !compiler_present {
        if check || regenerate {
            panic!("the Cap'n Proto compiler `capnp` is not on PATH (Debian: apt-get install capnproto)");
        }
        return;
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    capnpc::CompilerCommand::new()
        .src_prefix("schema")
        .file(SCHEMA)
        .output_path(&out_dir)
        .run()
        .unwrap_or_else(|error| panic!("capnp failed to compile {SCHEMA}: {error}"));
    let fresh_path = out_dir.join("messages_capnp.rs");
    let fresh = fs::read(&fresh_path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", fresh_path.display()));
    let committed = fs::read(COMMITTED).unwrap_or_default();
    if fresh == committed {
        return;
    }
    if regenerate {
        fs::write(COMMITTED, &fresh)
            .unwrap_or_else(|error| panic!("cannot write {COMMITTED}: {error}"));
    } else if check {
        panic!(
            "{COMMITTED} differs from a fresh generation of {SCHEMA}; \
             run `MIORAFT_REGENERATE=1 cargo build` and commit the result"
        );
    } else {
        println!(
            "cargo:warning={COMMITTED} is stale against {SCHEMA}: run `MIORAFT_REGENERATE=1 cargo build`"
        );
    }
}
