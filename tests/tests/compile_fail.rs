//! Misuses of `#[controller]`, `#[action]` and `#[derive(Entity)]` must fail to compile with an
//! error at the user's own line. One file per mistake in `ui/`; the expected compiler output is
//! the `.stderr` beside it (regenerate with `TRYBUILD=overwrite cargo test -p tests --test compile_fail`).

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/*.rs");
}
