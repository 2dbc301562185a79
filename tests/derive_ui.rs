//! `#[derive(ShmSafe)]` refusals: each file in `tests/derive_ui/` must fail
//! to compile with the error recorded beside it (`.stderr`). After a
//! deliberate change of message, regenerate with
//! `TRYBUILD=overwrite cargo test --all-features --test derive_ui` and
//! review the diff. The snapshots are rustc's output, so a new toolchain
//! may need the same.

#[test]
fn derive_refusals() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/derive_ui/*.rs");
}
